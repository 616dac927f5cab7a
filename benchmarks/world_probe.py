"""Does a built scenes world have E-VQA's structure? Measures every property the world promises.

Usage (from the project root; builds the world first if it is not cached, ~20-30 minutes for ``scenes``):
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/world_probe.py [--config scenes] [--limit N] [--out FILE]

Prints (and with ``--out`` writes) one JSON object:

* ``structure``: question kinds, phrasings per kind, distinct answers, record counts per split; whether every
  eval edit has its own subject; the smallest attribute distance between held-out contents; whether every
  rendering's scans show its content's digits, the rephrase uses other scans, eval scans are outside the
  pretraining pool, ``m_loc`` subjects are never edited, and ``alt`` is another answer of the record's kind.
* ``retrieval``: for every eval subject (E-VQA and E-IC), is the nearest canonical rendering to its
  ``image_rephrase`` its own, among ALL eval subjects? Nearest neighbour (Euclidean) on the image tokens the
  OPT sees (the Q-Former output after ``opt_proj``), flattened over the query tokens and mean-pooled, and on the
  hidden states at the image positions of each OPT layer in ``--layers``. No key is fitted.
* ``pre_edit_accuracy``: per kind, the unedited backbone's accuracy on eval records (``src``, ``rephrase``,
  ``image_rephrase``), scored by EasyEdit's own metric code (``toyworld.evaluate.pre_edit_accuracy``), plus its
  worst entry.
* ``build``: the manifest's build and pretraining times, CPU seconds, threads and load averages.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import easyedit_liveedit  # noqa: E402,F401  (applies the EasyEdit shims)
from easyedit_liveedit import toyworld  # noqa: E402
from easyedit_liveedit.toyworld import images, scene_facts  # noqa: E402
from easyedit_liveedit.toyworld.evaluate import ImageLoader, pre_edit_accuracy, worst_kind  # noqa: E402
from easyedit_liveedit.toyworld.pretrain import image_prefix  # noqa: E402
from easyedit_liveedit.toyworld.scene_world import scan_pools  # noqa: E402
from easyedit_liveedit.toyworld.scenes import Scene  # noqa: E402


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
    """Counts and invariants read from the written records (nothing is taken from the builder's word)."""
    splits = {name: _records(world, name) for name in ("vqa_train", "vqa_eval", "caption_train", "caption_eval")}
    _, labels = images.load_scans()
    pools = scan_pools(world.config, labels)
    evaluation = splits["vqa_eval"] + splits["caption_eval"]
    mloc_images = {r["m_loc"] for records in splits.values() for r in records}
    edited_images = {r["image"] for records in splits.values() for r in records}
    held_out = [Scene.from_json(r["scene"]) for r in evaluation]
    cls = _records(world, "classification")

    def renders_content(r: dict) -> bool:
        digits = r["scene"]["digits"]
        return [int(labels[s]) for s in r["scans"]] == digits == [int(labels[s]) for s in r["rephrase_scans"]]

    kinds = {k.name: k for k in scene_facts.SCENE_KINDS}
    vqa = splits["vqa_train"] + splits["vqa_eval"]
    return {
        "kinds": len(kinds),
        "phrasings_per_kind": {name: len(k.templates) for name, k in kinds.items()},
        "answers_per_kind": {name: len(k.answers) for name, k in kinds.items()},
        "distinct_answers": len(scene_facts.answer_space()),
        "records": {name: len(records) for name, records in splits.items()} | {"classification": len(cls)},
        "eval_records_per_kind": dict(Counter(r["kind"] for r in evaluation)),
        "eval_subjects_unique": len({r["subject"] for r in evaluation}) == len(evaluation)
        and len({r["image"] for r in evaluation}) == len(evaluation),
        "eval_contents_unique": len({s.attributes() for s in held_out}) == len(held_out),
        "eval_min_attribute_distance": min_distance(held_out),
        "renderings_show_the_content": all(renders_content(r) for records in splits.values() for r in records),
        "rephrase_uses_other_scans": all(
            all(a != b for a, b in zip(r["scans"], r["rephrase_scans"], strict=True))
            for records in splits.values()
            for r in records
        ),
        "eval_scans_outside_pretraining_pool": not (
            {s for r in evaluation for s in r["scans"] + r["rephrase_scans"]} & set(pools.train)
        ),
        "train_scans_inside_pretraining_pool": {
            s for r in splits["vqa_train"] + splits["caption_train"] for s in r["scans"] + r["rephrase_scans"]
        }
        <= set(pools.train),
        "mloc_subjects": len(mloc_images),
        "mloc_never_edited": not (mloc_images & edited_images),
        "alt_is_another_answer_of_the_kind": all(
            r["alt"] != r["pred"] and r["alt"] in kinds[r["kind"]].answers and r["pred"] in kinds[r["kind"]].answers
            for r in vqa
        ),
        "loc_is_text_arithmetic": all(
            r["loc"] in {scene_facts.arithmetic(a, b, t)[0] for a in range(10) for b in range(10) for t in range(4)}
            for records in splits.values()
            for r in records
        ),
    }


@torch.no_grad()
def retrieval(world: toyworld.ToyWorld, model: torch.nn.Module, layers: list[int]) -> dict:
    """Top-1 of each eval subject's ``image_rephrase`` among the canonical renderings of all eval subjects."""
    evaluation = _records(world, "vqa_eval") + _records(world, "caption_eval")
    loader = ImageLoader(world.layout.images, world.config.image_size)  # EasyEdit's processor
    features: dict[str, list[list[torch.Tensor]]] = defaultdict(lambda: [[], []])
    for start in range(0, len(evaluation), 256):
        chunk = evaluation[start : start + 256]
        for side, key in enumerate(("image", "image_rephrase")):
            pixels = torch.stack([loader(r[key]) for r in chunk])
            _, tokens = image_prefix(model, pixels)  # (B, n_query, d_opt): what Blip2OPT feeds the OPT
            features["opt_proj_flat"][side].append(tokens.flatten(1))
            features["opt_proj_mean"][side].append(tokens.mean(1))
            mask = torch.ones(tokens.shape[:2], dtype=torch.long)
            # Image tokens come first and OPT is causal, so their hidden states do not depend on any text.
            hidden = model.opt_model.model.decoder(
                inputs_embeds=tokens, attention_mask=mask, output_hidden_states=True, return_dict=True
            ).hidden_states  # embeddings, then each layer's output
            for layer in layers:
                features[f"opt_layer{layer}_flat"][side].append(hidden[layer + 1].flatten(1))
    out = {"subjects": len(evaluation), "metric": "nearest neighbour, Euclidean, no fitted key"}
    for name, (keys, queries) in features.items():
        keys, queries = torch.cat(keys), torch.cat(queries)  # (n, D)
        nearest = torch.cdist(queries, keys).argmin(1)
        hits = nearest == torch.arange(len(keys))
        out[name] = round(float(hits.float().mean()), 4)
        if name == "opt_proj_flat":
            kinds = Counter(r["kind"] for r, hit in zip(evaluation, hits.tolist(), strict=True) if not hit)
            out["opt_proj_flat_misses_by_kind"] = dict(kinds)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="scenes", help="a scenes configuration (scenes, scenes_small)")
    parser.add_argument("--limit", type=int, default=None, help="eval records per kind for accuracy (default all)")
    parser.add_argument("--layers", type=int, nargs="*", default=[1, 2], help="OPT layers for retrieval")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()
    world = toyworld.load(args.config, progress=False)
    if not isinstance(world.config, toyworld.SceneWorldConfig):
        raise SystemExit(f"--config {args.config}: not a scenes world")
    torch.set_num_threads(1)
    model = world.load_model()
    accuracy = pre_edit_accuracy(model, world.tokenizer(), world.layout, world.config.image_size, limit=args.limit)
    worst = worst_kind({k: v for k, v in accuracy.items() if k not in ("text", "m_loc")})
    manifest = world.manifest
    result = {
        "config": args.config,
        "world": str(world.layout.root),
        "structure": structure(world),
        "retrieval": retrieval(world, model, args.layers),
        "pre_edit_accuracy": accuracy,
        "worst_kind": {"name": worst[0], "value": worst[1]},
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
