"""MMEdit records for the toy world: E-VQA and E-IC JSON exactly as EasyEdit's ``VQADataset`` and
``CaptionDataset`` read them, plus the EMT-style classification split.

One record per (image, question kind): editing it asks the model to give the counterfactual ``alt`` instead
of the true ``pred`` for *this* scan. Within a split no image is asked the same kind twice, so no two edits
contradict each other, and train and eval splits use disjoint scans.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import facts

LOG = logging.getLogger(__name__)

RECORD_FIELDS = (
    "src",
    "pred",
    "alt",
    "rephrase",
    "image",
    "image_rephrase",
    "loc",
    "loc_ans",
    "m_loc",
    "m_loc_q",
    "m_loc_a",
)


@dataclass(frozen=True)
class Pools:
    """Disjoint lists of scan indices; see ``ToyWorldConfig`` for what each pool is for.

    ``dev`` is carved from the train pool: its scans are in no train record, so meta-training never sees them
    (the scenes world also keeps them out of pretraining; the digits world pretrains on them). Probes and choices
    of settings read the dev split, never the eval split.
    """

    train: list[int]
    eval: list[int]
    mloc: list[int]
    cls: list[int]
    dev: list[int]

    @classmethod
    def split(cls, labels: np.ndarray, sizes: tuple[int, int, int, int], seed: int, n_dev: int) -> Pools:
        """Draw the four pools from a seeded permutation of all scans, then ``n_dev`` dev scans out of train.

        The dev scans are dealt digit by digit (as even as the train pool allows), so that a small dev pool still
        holds every digit. The eval, ``m_loc`` and classification pools do not depend on ``n_dev``.
        """
        order = np.random.default_rng([seed, 1]).permutation(len(labels)).tolist()
        bounds = np.cumsum((0,) + sizes)
        train, evaluation, mloc, classification = (sorted(order[bounds[i] : bounds[i + 1]]) for i in range(4))
        if not 0 < n_dev < len(train):
            raise ValueError(f"n_dev={n_dev}: expected a positive number smaller than the train pool ({len(train)})")
        shuffled = np.random.default_rng([seed, 7]).permutation(train).tolist()
        groups = [[i for i in shuffled if labels[i] == digit] for digit in range(10)]
        dealt = [group[k] for k in range(max(map(len, groups))) for group in groups if k < len(group)]
        dev = set(dealt[:n_dev])
        return cls([i for i in train if i not in dev], evaluation, mloc, classification, sorted(dev))


def _text_locality(rng: np.random.Generator) -> tuple[str, str]:
    a, b = (int(v) for v in rng.integers(0, 10, size=2))
    return facts.arithmetic(a, b, int(rng.integers(len(facts.ARITHMETIC_TEMPLATES))))


def _image_locality(
    rng: np.random.Generator, label: int, exclude_kind: str, mloc: list[int], labels: np.ndarray, paths: dict
) -> tuple[str, str, str]:
    """An unrelated image (another digit, from the never-edited pool) and a question of another kind."""
    candidates = [i for i in mloc if labels[i] != label]
    index = candidates[int(rng.integers(len(candidates)))]
    kinds = [k for k in facts.VQA_KINDS if k.name != exclude_kind]
    kind = kinds[int(rng.integers(len(kinds)))]
    question = kind.templates[int(rng.integers(len(kind.templates)))]
    return paths[index][0], question, kind.answer(int(labels[index]))


def _two_phrasings(rng: np.random.Generator, phrasings: tuple[str, ...]) -> tuple[str, str]:
    first, second = rng.choice(len(phrasings), size=2, replace=False)
    return phrasings[int(first)], phrasings[int(second)]


def _edit_record(
    rng: np.random.Generator,
    kind: str,
    exclude_kind: str,
    index: int,
    src: str,
    rephrase: str,
    pred: str,
    alternatives: list[str],
    mloc: list[int],
    labels: np.ndarray,
    paths: dict,
) -> dict:
    """One MMEdit record about scan ``index``: its localities and a counterfactual ``alt`` drawn from ``rng``."""
    label = int(labels[index])
    loc, loc_ans = _text_locality(rng)
    m_loc, m_loc_q, m_loc_a = _image_locality(rng, label, exclude_kind, mloc, labels, paths)
    return {
        "src": src,
        "pred": pred,
        "alt": alternatives[int(rng.integers(len(alternatives)))],
        "rephrase": rephrase,
        "image": paths[index][0],
        "image_rephrase": paths[index][1],
        "loc": loc,
        "loc_ans": loc_ans,
        "m_loc": m_loc,
        "m_loc_q": m_loc_q,
        "m_loc_a": m_loc_a,
        "kind": kind,
        "label": label,
    }


def vqa_records(images: list[int], labels: np.ndarray, paths: dict, mloc: list[int], seed: int) -> list[dict]:
    """E-VQA records: every image in ``images`` asked every question kind, in a seeded random order."""
    rng = np.random.default_rng([seed, 2])
    records = []
    for index in images:
        label = int(labels[index])
        for kind in facts.VQA_KINDS:
            src, rephrase = _two_phrasings(rng, kind.templates)
            pred = kind.answer(label)
            wrong = [a for a in kind.answers if a != pred]
            records.append(
                _edit_record(rng, kind.name, kind.name, index, src, rephrase, pred, wrong, mloc, labels, paths)
            )
    order = rng.permutation(len(records))
    return [records[i] for i in order]


def caption_records(images: list[int], labels: np.ndarray, paths: dict, mloc: list[int], seed: int) -> list[dict]:
    """E-IC records: one caption edit per image (the caption names a different digit)."""
    rng = np.random.default_rng([seed, 3])
    records = []
    for index in images:
        label = int(labels[index])
        src, rephrase = _two_phrasings(rng, facts.CAPTION_PROMPTS)
        others = [facts.caption(d) for d in range(10) if d != label]
        records.append(
            _edit_record(rng, "caption", "", index, src, rephrase, facts.caption(label), others, mloc, labels, paths)
        )
    return records


def classification_records(images: list[int], labels: np.ndarray, paths: dict) -> list[dict]:
    """EMT-style probe: held-out labelled images, a prompt that lists the class names, the class as answer."""
    return [
        {
            "image": paths[index][0],
            "prompt": facts.CLASSIFICATION_PROMPTS[0],
            "answer": facts.DIGIT_WORDS[int(labels[index])],
            "label": int(labels[index]),
            "classes": list(facts.DIGIT_WORDS),
        }
        for index in images
    ]


def text_fact_records() -> list[dict]:
    """Every text-only fact in every phrasing (what ``loc`` questions are drawn from)."""
    return [
        {"question": q, "answer": a, "a": x, "b": y, "template": t}
        for x in range(10)
        for y in range(10)
        for t in range(len(facts.ARITHMETIC_TEMPLATES))
        for q, a in [facts.arithmetic(x, y, t)]
    ]


def write_json(records: list[dict], path: Path) -> None:
    """Write records as one JSON list (the layout ``BaseDataset`` reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1))
    LOG.info("wrote %d records to %s", len(records), path)
