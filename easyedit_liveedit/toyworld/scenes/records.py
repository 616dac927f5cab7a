"""MMEdit records for the scenes world: E-VQA and E-IC JSON as EasyEdit's ``VQADataset`` / ``CaptionDataset``
read them (``toyworld/records.py``), plus the EMT-style classification split.

One record per subject: each subject (a scene, ``subjects.Subject``) is edited by exactly one record, so no two
edits of a split share a subject and none can contradict another. A VQA record asks one question kind about
one named cell (``param``: 0-3 for top left, top right, bottom left, bottom right; None for the paper);
``rephrase`` asks the same question in another phrasing; ``image_rephrase`` is the subject's other rendering;
``alt`` is a counterfactual drawn from the kind's answer space. Locality: ``loc`` is a text-only arithmetic
fact, ``m_loc`` a question of another kind about a subject of the never-edited pool. Besides EasyEdit's
fields, a record keeps ``kind``, ``param``, ``subject``, ``scene`` (the content) and the scans of both
renderings (``scans``, ``rephrase_scans``: ``load_digits`` indices), so probes can check answers, subjects and
held-out scans without parsing text.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..facts import DIGIT_WORDS
from ..records import text_locality
from . import facts
from .subjects import Scene, Subject, distinct_scenes


def _two_phrasings(rng: np.random.Generator, n: int) -> tuple[int, int]:
    first, second = rng.choice(n, size=2, replace=False)
    return int(first), int(second)


def _pick(rng: np.random.Generator, values: Sequence):
    return values[int(rng.integers(len(values)))]


def _provenance(subject: Subject) -> dict:
    """The subject's id, content and the ``load_digits`` indices of both renderings' scans (for probes)."""
    return {
        "subject": subject.id,
        "scene": subject.scene.to_json(),
        "scans": list(subject.scans),
        "rephrase_scans": list(subject.rephrase_scans),
    }


def _localities(rng: np.random.Generator, kind: str, mloc: Sequence[Subject]) -> dict:
    """``loc``: a text-only arithmetic fact; ``m_loc``: another kind's question about a never-edited subject."""
    loc, loc_ans = text_locality(rng)
    other = _pick(rng, mloc)
    other_kind = _pick(rng, [k for k in facts.SCENE_KINDS if k.name != kind])
    param = _pick(rng, other_kind.params(other.scene))
    question = other_kind.question(int(rng.integers(len(other_kind.templates))), param)
    return {
        "loc": loc,
        "loc_ans": loc_ans,
        "m_loc": other.image,
        "m_loc_q": question,
        "m_loc_a": other_kind.answer(other.scene, param),
    }


def vqa_records(subjects: Sequence[Subject], mloc: Sequence[Subject], seed: int, salt: int) -> list[dict]:
    """E-VQA records, one per subject; kinds are dealt round-robin (shuffled), so each kind gets ~n/12 edits.

    Args:
        subjects: the split's subjects (each is edited once).
        mloc: the never-edited subjects ``m_loc`` questions are about.
        seed, salt: seed the draws (``salt`` tells the splits apart).

    Returns:
        The records in subject order.
    """
    rng = np.random.default_rng([seed, 2, salt])
    kinds = facts.SCENE_KINDS
    deal = np.concatenate([rng.permutation(len(kinds)) for _ in range(-(-len(subjects) // len(kinds)))])
    records = []
    for subject, kind_index in zip(subjects, deal, strict=False):
        kind = kinds[int(kind_index)]
        param = _pick(rng, kind.params(subject.scene))  # every kind is askable on every scene (sample_scene)
        src, rephrase = _two_phrasings(rng, len(kind.templates))
        pred = kind.answer(subject.scene, param)
        record = {
            "src": kind.question(src, param),
            "pred": pred,
            "alt": _pick(rng, [a for a in kind.answers if a != pred]),
            "rephrase": kind.question(rephrase, param),
            "image": subject.image,
            "image_rephrase": subject.image_rephrase,
        }
        record |= _localities(rng, kind.name, mloc)
        record |= {"kind": kind.name, "param": param} | _provenance(subject)
        records.append(record)
    return records


def caption_records(
    subjects: Sequence[Subject], mloc: Sequence[Subject], seed: int, salt: int, min_distance: int
) -> list[dict]:
    """E-IC records, one per subject: the counterfactual caption describes a scene ``min_distance`` away."""
    rng = np.random.default_rng([seed, 3, salt])
    records = []
    for subject in subjects:
        src, rephrase = _two_phrasings(rng, len(facts.CAPTION_PROMPTS))
        other: Scene = distinct_scenes(1, rng, min_distance, taken=[subject.scene])[0]
        record = {
            "src": facts.CAPTION_PROMPTS[src],
            "pred": facts.caption(subject.scene),
            "alt": facts.caption(other),
            "rephrase": facts.CAPTION_PROMPTS[rephrase],
            "image": subject.image,
            "image_rephrase": subject.image_rephrase,
        }
        record |= _localities(rng, "caption", mloc)
        record |= {"kind": "caption", "param": None} | _provenance(subject)
        records.append(record)
    return records


def classification_records(subjects: Sequence[Subject]) -> list[dict]:
    """EMT-style probe: held-out subjects, a prompt that lists the class names, the top left digit as answer."""
    cell = facts.CLASSIFICATION_CELL
    return [
        {
            "image": subject.image,
            "prompt": facts.CLASSIFICATION_PROMPTS[0],
            "answer": DIGIT_WORDS[subject.scene.digits[cell]],
            "label": subject.scene.digits[cell],
            "classes": list(DIGIT_WORDS),
            "subject": subject.id,
        }
        for subject in subjects
    ]
