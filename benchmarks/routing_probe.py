"""Where LiveEdit's routing loses edits on the toy world: which experts fire for each input after N edits.

Usage (from the project root, after `make setup`):
    .venv/bin/python benchmarks/routing_probe.py [--archive PATH] [--edits 1000]

The library holds the experts of the first N eval records' edits (one per record, expert id = record index).
For each of those records it routes three inputs and reports, per input kind:
- `edit` (the edit's own question and image), `image_rephrase` (the same question, the other view of the scan):
  how often the record's own expert passes the hard filter, how often it also carries the largest soft weight,
  its mean weight, and how many experts fire in all;
- `m_loc` (a question of another kind about a scan of another digit, which no expert should touch): how often any
  expert fires, and how many.
Routing only: the backbone runs up to the edit layer (`LiveEdit.routing_report`). One torch thread.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from liveedit_speed import batch_of, fill_library, load_editor

from easyedit_liveedit.toyworld.evaluate import ImageLoader


def samples_of(world, hparams, records: list[dict], kind: str) -> list[dict]:
    """One EasyEdit edit-format sample per record: its edit, its edit on the other view, or its M-Loc question."""
    from easyeditor.evaluate.evaluate import prepare_multimodal_edit

    load = ImageLoader(world.layout.images, world.config.image_size)
    tok = world.tokenizer()
    fields = {"edit": ("src", "alt", "image"), "image_rephrase": ("src", "alt", "image_rephrase"),
              "m_loc": ("m_loc_q", "m_loc_a", "m_loc")}[kind]  # fmt: skip
    prompt, target, image = fields
    return [prepare_multimodal_edit(hparams, tok, r[target], r[prompt], load(r[image])) for r in records]


def summary(reports: list[list[tuple[int, float]]], own: list[int] | None) -> dict[str, float]:
    fired = [len(row) for row in reports]
    result = {"mean_fired": statistics.mean(fired), "any_fired": sum(n > 0 for n in fired) / len(fired)}
    if own is not None:
        weights = [dict(row) for row in reports]  # expert id -> weight, per input
        result["own_kept"] = statistics.mean(i in w for w, i in zip(weights, own, strict=True))
        result["own_heaviest"] = statistics.mean(bool(r) and r[0][0] == i for r, i in zip(reports, own, strict=True))
        result["own_mean_weight"] = statistics.mean(w.get(i, 0.0) for w, i in zip(weights, own, strict=True))
    return {k: round(v, 3) for k, v in result.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", help="trained LiveEdit archive (default: the toy YAML's)")
    parser.add_argument("--edits", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)

    world, hparams, editor, archive = load_editor(args.archive)
    records = json.loads(world.split("vqa_eval").read_text())[: args.edits]
    results: dict[str, object] = {"archive": archive, "edits": args.edits}
    with torch.no_grad():
        fill_library(editor, samples_of(world, hparams, records, "edit"), args.edits)
        own = editor.library.ids()
        for kind in ("edit", "image_rephrase", "m_loc"):
            samples = samples_of(world, hparams, records, kind)
            reports = [row for start in range(0, len(samples), 8)
                       for row in editor.routing_report(batch_of(samples[start : start + 8]))]  # fmt: skip
            results[kind] = summary(reports, None if kind == "m_loc" else own)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
