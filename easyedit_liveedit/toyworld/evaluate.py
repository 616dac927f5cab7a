"""Pre-edit accuracy of the toy backbone per question kind, scored by EasyEdit's own metric code.

Each question is scored with ``easyeditor.evaluate.prepare_multimodal_edit`` + ``compute_multimodal_edit_quality``
(the functions ``compute_multimodal_edit_results`` calls), at batch size 1 as ``MultimodalEditor`` does; the
target is the true answer (``pred``, ``loc_ans``, ``m_loc_a``), so the number says how well the unedited model
knows what the edits will change, and what locality will check stays unchanged.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import torch

from ..easyedit.compat import targets

LOG = logging.getLogger(__name__)


class ImageLoader:
    """Loads and processes images with EasyEdit's ``BlipImageEvalProcessor`` at the toy size (memoised per path)."""

    def __init__(self, root: Path, image_size: int) -> None:
        processors = importlib.import_module("easyeditor.dataset.processor.blip_processors")
        self.processor = processors.BlipImageEvalProcessor(image_size=image_size, mean=None, std=None)
        self.root = Path(root)
        self._cache: dict[str, torch.Tensor] = {}

    def __call__(self, relative: str) -> torch.Tensor:
        if relative not in self._cache:
            self._cache[relative] = targets.process_image(self.processor, self.root / relative)
        return self._cache[relative]


def score(model, tok, prompt: str, target: str, image: torch.Tensor | None) -> float:
    """EasyEdit's teacher-forced token accuracy of ``target`` after ``prompt`` (one example)."""
    evaluate = importlib.import_module("easyeditor.evaluate")
    hparams = SimpleNamespace(model_name="blip2")
    batch = evaluate.prepare_multimodal_edit(hparams, tok, target, prompt, image)
    accuracy, _ = evaluate.compute_multimodal_edit_quality(model, batch)
    return float(accuracy)


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 4) if values else float("nan")


@torch.no_grad()
def pre_edit_accuracy(
    model, tok, layout, image_size: int, limit: int | None = 200, split: str = "eval"
) -> dict[str, dict[str, float]]:
    """Per question kind, the unedited model's accuracy on held-out records (images never seen in pretraining).

    Args:
        model: the toy ``Blip2OPT`` (eval mode is set here).
        tok: its OPT-side tokenizer.
        layout: the built toy world's ``Layout``.
        image_size: the processor size.
        limit: at most this many records per kind (None: all); records are already in a seeded random order.
        split: ``eval`` (the world's final figures, written once into its manifest) or ``dev`` (what probes and
            choices read).

    Returns:
        kind -> {"src": ..., "rephrase": ..., "image_rephrase": ..., "n": ...} for each VQA kind and "caption";
        "text" -> {"loc": ...} (text-only facts); "m_loc" -> {"m_loc": ...}; "classification" -> {"src": ...}.
    """
    model.eval()
    images = ImageLoader(layout.images, image_size)
    records_by_kind = defaultdict(list)
    for name in (f"vqa_{split}", f"caption_{split}"):
        for record in json.loads(layout.split(name).read_text()):
            records_by_kind[record["kind"]].append(record)
    results: dict[str, dict[str, float]] = {}
    loc, m_loc = [], []
    for kind, records in records_by_kind.items():
        chosen = records if limit is None else records[:limit]
        parts = defaultdict(list)
        for r in chosen:
            parts["src"].append(score(model, tok, r["src"], r["pred"], images(r["image"])))
            parts["rephrase"].append(score(model, tok, r["rephrase"], r["pred"], images(r["image"])))
            parts["image_rephrase"].append(score(model, tok, r["src"], r["pred"], images(r["image_rephrase"])))
            loc.append(score(model, tok, r["loc"], r["loc_ans"], None))
            m_loc.append(score(model, tok, r["m_loc_q"], r["m_loc_a"], images(r["m_loc"])))
        results[kind] = {key: _mean(values) for key, values in parts.items()} | {"n": len(chosen)}
    results["text"] = {"loc": _mean(loc), "n": len(loc)}
    results["m_loc"] = {"m_loc": _mean(m_loc), "n": len(m_loc)}
    cls_records = json.loads(layout.split("classification").read_text())
    cls_records = cls_records if limit is None else cls_records[:limit]
    cls = [score(model, tok, r["prompt"], r["answer"], images(r["image"])) for r in cls_records]
    results["classification"] = {"src": _mean(cls), "n": len(cls)}
    return results


def worst_kind(results: dict[str, dict[str, float]]) -> tuple[str, float]:
    """The lowest accuracy over every kind and part (what the >= 90% target is checked against)."""
    pairs = [
        (f"{kind}.{part}", value) for kind, parts in results.items() for part, value in parts.items() if part != "n"
    ]
    return min(pairs, key=lambda pair: pair[1])
