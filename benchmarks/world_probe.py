"""Does a built scenes world have E-VQA's structure? Measures every property the world promises, on the dev split.

Usage (from the project root; builds the world first if it is not cached, ~20-30 minutes for ``scenes``):
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/world_probe.py [--config scenes] [--split dev] [--limit N]
        [--out FILE]

Prints (and with ``--out`` writes) one JSON object:

* ``structure``: question kinds, phrasings per kind, distinct answers, record counts per split; whether every
  eval (and every dev) edit has its own subject; the smallest attribute distance between held-out contents;
  whether every rendering's scans show its content's digits, the rephrase uses other scans, eval and dev scans
  are outside the pretraining pool, ``m_loc`` subjects are never edited, and ``alt`` is another answer of the
  record's kind. Read from the records alone, no model.
* ``retrieval``: for every subject of ``--split`` (E-VQA and E-IC), is the nearest canonical rendering to its
  ``image_rephrase`` its own, among ALL that split's subjects (``toyworld.scenes.retrieval``; no key is
  fitted), on the image tokens the OPT sees and on the hidden states of each OPT layer in ``--layers``.
* ``pre_edit_accuracy``: per kind, the unedited backbone's accuracy on ``--split`` records (``src``,
  ``rephrase``, ``image_rephrase``), scored by EasyEdit's own metric code, plus its worst entry.
* ``final``: the world's eval-split figures, as its build measured them once (the manifest); this probe never
  scores the eval split itself and refuses ``--split eval``.
* ``build``: the manifest's build and pretraining times, CPU seconds, threads and load averages.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from liveedit_speed import split_option  # noqa: E402

import easyedit_liveedit  # noqa: E402,F401  (applies the EasyEdit shims)
from easyedit_liveedit import toyworld  # noqa: E402
from easyedit_liveedit.toyworld.evaluate import pre_edit_accuracy, worst_kind  # noqa: E402
from easyedit_liveedit.toyworld.facts import text_facts  # noqa: E402
from easyedit_liveedit.toyworld.scans import load_scans  # noqa: E402
from easyedit_liveedit.toyworld.scenes import facts as scene_facts  # noqa: E402
from easyedit_liveedit.toyworld.scenes.build import scan_pools  # noqa: E402
from easyedit_liveedit.toyworld.scenes.retrieval import retrieval  # noqa: E402
from easyedit_liveedit.toyworld.scenes.subjects import Scene  # noqa: E402


def _records(world: toyworld.ToyWorld, name: str) -> list[dict]:
    return json.loads(world.split(name).read_text())


def min_distance(scenes: list[Scene]) -> int:
    """The smallest number of differing attributes between two of ``scenes`` (9 if fewer than two)."""
    table = np.array([s.attributes() for s in scenes], dtype=np.int8)
    best = 9
    for start in range(0, len(table), 256):
        block = table[start : start + 256]
        diff = (block[:, None, :] != table[None, :, :]).sum(-1)  # (b, n)
        diff[np.arange(len(block)), start + np.arange(len(block))] = 9  # a scene's distance to itself
        best = min(best, int(diff.min()))
    return best


def structure(world: toyworld.ToyWorld) -> dict:
    """Counts and invariants read from the written records (nothing is taken from the builder's word; no model)."""
    names = [f"{kind}_{split}" for split in ("train", "dev", "eval") for kind in ("vqa", "caption")]
    splits = {name: _records(world, name) for name in names}
    _, labels = load_scans()
    pools = scan_pools(world.config, labels)
    held = {split: splits[f"vqa_{split}"] + splits[f"caption_{split}"] for split in ("train", "dev", "eval")}
    mloc_images = {r["m_loc"] for records in splits.values() for r in records}
    edited_images = {r["image"] for records in splits.values() for r in records}
    cls = _records(world, "classification")

    def renders_content(r: dict) -> bool:
        digits = r["scene"]["digits"]
        return [int(labels[s]) for s in r["scans"]] == digits == [int(labels[s]) for s in r["rephrase_scans"]]

    def scans(records: list[dict]) -> set[int]:
        return {s for r in records for s in r["scans"] + r["rephrase_scans"]}

    def own_subjects(records: list[dict]) -> bool:
        return len({r["subject"] for r in records}) == len({r["image"] for r in records}) == len(records)

    kinds = {k.name: k for k in scene_facts.SCENE_KINDS}
    vqa = splits["vqa_train"] + splits["vqa_dev"] + splits["vqa_eval"]
    out = {
        "kinds": len(kinds),
        "phrasings_per_kind": {name: len(k.templates) for name, k in kinds.items()},
        "answers_per_kind": {name: len(k.answers) for name, k in kinds.items()},
        "distinct_answers": len(scene_facts.answer_space()),
        "records": {name: len(records) for name, records in splits.items()} | {"classification": len(cls)},
    }
    for split in ("eval", "dev"):
        contents = [Scene.from_json(r["scene"]) for r in held[split]]
        out |= {
            f"{split}_records_per_kind": dict(Counter(r["kind"] for r in held[split])),
            f"{split}_subjects_unique": own_subjects(held[split]),
            f"{split}_contents_unique": len({s.attributes() for s in contents}) == len(contents),
            f"{split}_min_attribute_distance": min_distance(contents),
            f"{split}_scans_outside_pretraining_pool": not (scans(held[split]) & set(pools.train)),
        }
    return out | {
        "dev_scans_in_no_train_record": not (scans(held["dev"]) & scans(held["train"])),
        "renderings_show_the_content": all(renders_content(r) for records in splits.values() for r in records),
        "rephrase_uses_other_scans": all(
            all(a != b for a, b in zip(r["scans"], r["rephrase_scans"], strict=True))
            for records in splits.values()
            for r in records
        ),
        "train_scans_inside_pretraining_pool": scans(held["train"]) <= set(pools.train),
        "mloc_subjects": len(mloc_images),
        "mloc_never_edited": not (mloc_images & edited_images),
        "alt_is_another_answer_of_the_kind": all(
            r["alt"] != r["pred"] and r["alt"] in kinds[r["kind"]].answers and r["pred"] in kinds[r["kind"]].answers
            for r in vqa
        ),
        "loc_is_text_arithmetic": all(
            r["loc"] in {fact["question"] for fact in text_facts()} for records in splits.values() for r in records
        ),
    }


def worst_question_kind(accuracy: dict[str, dict[str, float]]) -> dict:
    """The lowest accuracy over the image question kinds and captions (not text facts, not ``m_loc``)."""
    name, value = worst_kind({k: v for k, v in accuracy.items() if k not in ("text", "m_loc")})
    return {"name": name, "value": value}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="scenes", help="a scenes configuration (scenes, scenes_small)")
    split_option(parser, "dev", "records the model is scored on: dev (vqa_dev + caption_dev); eval is refused")
    parser.add_argument("--limit", type=int, default=None, help="records per kind for accuracy (default all)")
    parser.add_argument("--layers", type=int, nargs="*", default=[1, 2], help="OPT layers for retrieval")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.split not in ("dev", "train"):
        parser.error(f"--split {args.split}: expected dev (or train); the records of both kinds are read")
    world = toyworld.load(args.config, progress=False)
    if not isinstance(world.config, toyworld.SceneWorldConfig):
        raise SystemExit(f"--config {args.config}: not a scenes world")
    torch.set_num_threads(1)
    model = world.load_model()
    size = world.config.image_size
    accuracy = pre_edit_accuracy(model, world.tokenizer(), world.layout, size, limit=args.limit, split=args.split)
    manifest = world.manifest
    result = {
        "config": args.config,
        "world": str(world.layout.root),
        "split": args.split,
        "structure": structure(world),
        "retrieval": retrieval(model, world.layout, size, args.split, args.layers),
        "pre_edit_accuracy": accuracy,
        "worst_kind": worst_question_kind(accuracy),
        "final": {
            "pre_edit_accuracy": manifest["pre_edit_accuracy"],
            "worst_kind": worst_question_kind(manifest["pre_edit_accuracy"]),
            "retrieval": manifest["retrieval"],
        },
        "build": {
            "build_seconds": manifest["build_seconds"],
            "pretraining": manifest["pretraining"],
            "load_average": manifest.get("load_average"),
            "parameters": manifest["sizes"]["parameters"],
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
