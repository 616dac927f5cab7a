"""MMEdit records for the digits world: E-VQA and E-IC JSON exactly as EasyEdit's ``VQADataset`` and
``CaptionDataset`` read them (``toyworld/records.py``), plus the EMT-style classification split.

One record per (image, question kind): editing it asks the model to give the counterfactual ``alt`` instead
of the true ``pred`` for *this* scan. Within a split no image is asked the same kind twice, so no two edits
contradict each other, and train and eval splits use disjoint scans.
"""

from __future__ import annotations

import numpy as np

from ..facts import DIGIT_WORDS
from ..records import text_locality
from . import facts


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
    loc, loc_ans = text_locality(rng)
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
            "answer": DIGIT_WORDS[int(labels[index])],
            "label": int(labels[index]),
            "classes": list(DIGIT_WORDS),
        }
        for index in images
    ]
