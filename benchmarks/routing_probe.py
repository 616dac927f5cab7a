"""Where LiveEdit's routing loses edits on the toy world: which experts fire for each input after N edits.

Usage (from the project root, after `make setup`):
    .venv/bin/python benchmarks/routing_probe.py [--archive PATH] [--edits 1000] [--split vqa_dev]

The library holds the experts of the first N records of `--split` (default vqa_dev; the eval split is refused),
one edit per record (expert id = record index).
For each of those records it routes three inputs and reports, per input kind:
- `edit` (the edit's own question and image), `rephrase` (the paraphrased question, same image), `image_rephrase`
  (the same question, the other view of the scan):
  how often the record's own expert passes the hard filter, how often it also carries the largest soft weight,
  its mean weight, and how many experts fire in all;
- `m_loc` (a question of another kind about a scan of another digit, which no expert should touch): how often any
  expert fires, and how many.
On the digits world, for every input it also splits the experts that pass the hard filter although their edit shows
another scan (`stray`) by whether that scan shows the same digit: the share of such experts that pass, per group.

Then it scores reliability (`rel`), text generality (`t_gen`) and image generality (`m_gen`) with EasyEdit's own
metric code, three ways, to locate the loss:
- `routed`: the real inference path (hard filter, then soft weights), as the comparison scores it;
- `scan_filter`: the hard filter replaced by the truth, "the expert's edit shows this scan"; soft routing as is;
- `own_expert`: only the record's own expert, at its soft weight (the generator alone).
Routing counts need only the backbone up to the edit layer (`LiveEdit.routing_report`). One torch thread.
"""

from __future__ import annotations

import json
import statistics

import torch
from liveedit_speed import batch_of, load_editor, probe_arguments
from tqdm import tqdm

from easyedit_liveedit.liveedit.networks import Experts
from easyedit_liveedit.toyworld.evaluate import ImageLoader


def samples_of(world, hparams, records: list[dict], kind: str) -> list[dict]:
    """One EasyEdit edit-format sample per record: its edit, its edit on the other view, or its M-Loc question."""
    from easyeditor.evaluate import prepare_multimodal_edit

    load = ImageLoader(world.layout.images, world.config.image_size)
    tok = world.tokenizer()
    fields = {"edit": ("src", "alt", "image"), "rephrase": ("rephrase", "alt", "image"),
              "image_rephrase": ("src", "alt", "image_rephrase"),
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


def scan_of(path: str) -> str:
    """``digits/0042.png`` and its other view ``views/0042.png`` show one scan: its file name."""
    return path.rsplit("/", 1)[-1]


def stray_rates(reports: list[list[tuple[int, float]]], records: list[dict], image: str) -> dict[str, float]:
    """Share of the experts whose edit shows another scan that pass the hard filter, by that scan's digit.

    Expert ``i`` is record ``i``'s edit; ``image`` is the record field holding each routed input's image.
    """
    scans, digits = [scan_of(r["image"]) for r in records], [r["label"] for r in records]
    passed = {"same_digit": 0, "other_digit": 0}
    pool = {"same_digit": 0, "other_digit": 0}
    for row, record in zip(reports, records, strict=True):
        scan, digit = scan_of(record[image]), record["label"]
        fired = {i for i, _ in row}
        for i, (s, d) in enumerate(zip(scans, digits, strict=True)):
            if s != scan:
                group = "same_digit" if d == digit else "other_digit"
                pool[group] += 1
                passed[group] += i in fired
    return {f"stray_pass_{g}": round(passed[g] / pool[g], 4) for g in passed if pool[g]}


class _Mixing:
    """A callable model for EasyEdit's metric: answers with fixed experts switched on per input (mix mode)."""

    def __init__(self, editor, experts, switch) -> None:
        self.editor, self.experts, self.switch = editor, experts, switch

    def __call__(self, batch: dict):
        return self.editor.forward_with_experts(batch, self.experts, self.switch)[0]


def accuracies(editor, experts, world, hparams, records: list[dict]) -> dict[str, dict[str, float]]:
    """``rel``, ``t_gen``, ``m_gen`` under the three routings (module docstring), EasyEdit's metric at batch 1."""
    from easyeditor.evaluate import compute_multimodal_edit_quality, prepare_multimodal_edit

    load = ImageLoader(world.layout.images, world.config.image_size)
    tok = world.tokenizer()
    names = [scan_of(r["image"]) for r in records]
    scans = torch.tensor([names.index(n) for n in names])  # one number per scan
    parts = {"rel": ("src", "image"), "t_gen": ("rephrase", "image"), "m_gen": ("src", "image_rephrase")}
    scores: dict[str, dict[str, list[float]]] = {
        m: {p: [] for p in parts} for m in ("routed", "scan_filter", "own_expert")
    }
    for j, r in enumerate(tqdm(records, desc="scoring", leave=False)):
        models = {
            "routed": editor,
            "scan_filter": _Mixing(editor, experts, (scans == scans[j])[None]),
            "own_expert": _Mixing(editor, experts, (torch.arange(len(records)) == j)[None]),
        }
        for part, (prompt, image) in parts.items():
            batch = prepare_multimodal_edit(hparams, tok, r["alt"], r[prompt], load(r[image]))
            for mode, model in models.items():
                scores[mode][part].append(float(compute_multimodal_edit_quality(model, batch)[0]))
    return {m: {p: round(statistics.mean(v), 3) for p, v in by_part.items()} for m, by_part in scores.items()}


def main(argv: list[str] | None = None) -> None:
    args = probe_arguments(__doc__, edits=1000, argv=argv)

    world, hparams, editor, archive = load_editor(args.archive)
    records = json.loads(world.split(args.split).read_text())[: args.edits]
    results: dict[str, object] = {"archive": archive, "edits": args.edits}
    with torch.no_grad():
        edits = samples_of(world, hparams, records, "edit")
        made = [editor.make_experts(batch_of(edits[start : start + 8])) for start in range(0, len(edits), 8)]
        experts = Experts(*(torch.cat([getattr(e, f) for e in made]) for f in ("psi", "phi", "U", "V")))
        editor.reset()
        own = editor.library.add(experts)
        kinds = (("edit", "image"), ("rephrase", "image"), ("image_rephrase", "image_rephrase"), ("m_loc", "m_loc"))
        for kind, image in kinds:
            samples = samples_of(world, hparams, records, kind)
            reports = [row for start in range(0, len(samples), 8)
                       for row in editor.routing_report(batch_of(samples[start : start + 8]))]  # fmt: skip
            results[kind] = summary(reports, None if kind == "m_loc" else own)
            if kind != "m_loc" and "label" in records[0]:  # digits world; an M-Loc scan's digit is not in its record
                results[kind] |= stray_rates(reports, records, image)
        results["accuracy"] = accuracies(editor, experts, world, hparams, records)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
