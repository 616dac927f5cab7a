"""What both worlds' MMEdit records share: EasyEdit's fields, the text-only locality, and the file format.

A world's records (``digits.records``, ``scenes.records``) are E-VQA / E-IC JSON exactly as EasyEdit's
``VQADataset`` and ``CaptionDataset`` read them: each holds ``RECORD_FIELDS`` and may add fields of its own
(``kind``, ``label``, ``subject``, ...) that probes read and EasyEdit ignores.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from .facts import ARITHMETIC_TEMPLATES, arithmetic

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


def text_locality(rng: np.random.Generator) -> tuple[str, str]:
    """``loc`` and ``loc_ans``: a text-only sum of two digits in a random phrasing (three draws from ``rng``)."""
    a, b = (int(v) for v in rng.integers(0, 10, size=2))
    return arithmetic(a, b, int(rng.integers(len(ARITHMETIC_TEMPLATES))))


def write_json(records: list[dict], path: Path) -> None:
    """Write records as one JSON list (the layout ``BaseDataset`` reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1))
    LOG.debug("wrote %d records to %s", len(records), path)
