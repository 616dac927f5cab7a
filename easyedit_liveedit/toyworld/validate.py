"""Validate an MMEdit JSON file before EasyEdit's loader sees it.

EasyEdit's ``VQADataset``/``CaptionDataset`` skip a record with an empty ``alt`` silently (so the edit count
shrinks without a word), fail with a bare ``KeyError`` on a missing field, and with a PIL traceback that does
not say which record on a missing or corrupt image. This check names the record index and the field instead.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .records import RECORD_FIELDS

LOG = logging.getLogger(__name__)

TEXT_FIELDS = ("src", "pred", "alt", "rephrase", "loc", "loc_ans", "m_loc_q", "m_loc_a")
IMAGE_FIELDS = {"image": "coco_image", "image_rephrase": "rephrase_image", "m_loc": "coco_image"}


def _check_image(path: Path, index: int, field: str, source: str) -> None:
    if not path.is_file():
        raise ValueError(f"{source}: record {index}, field {field!r}: image file {path} does not exist")
    try:
        with Image.open(path) as image:
            image.load()  # decodes the pixels; `verify()` alone misses truncated data
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(
            f"{source}: record {index}, field {field!r}: image file {path} is corrupt ({error})"
        ) from None


def validate_records(
    records: object, image_root: str | Path, rephrase_root: str | Path | None = None, source: str = "records"
) -> int:
    """Check every record of an MMEdit list; returns the number of records.

    Args:
        records: the parsed JSON (must be a list of objects).
        image_root: the hparams' ``coco_image`` (root of ``image`` and ``m_loc``).
        rephrase_root: the hparams' ``rephrase_image`` (root of ``image_rephrase``); defaults to image_root.
        source: named in error messages (the file path).

    Raises:
        TypeError: the data is not a list of objects, or a text field is not a string.
        ValueError: a field is missing, a text field (``alt`` above all) is empty, an image file is missing or
            cannot be decoded, or two records edit the same image with the same question.
    """
    roots = {"coco_image": Path(image_root), "rephrase_image": Path(rephrase_root or image_root)}
    if not isinstance(records, list):
        raise TypeError(f"{source}: expected a JSON list of records, got {type(records).__name__}")
    seen: dict[tuple[str, str], int] = {}
    checked: set[Path] = set()  # m_loc images recur across records; decode each file once
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise TypeError(f"{source}: record {index} is a {type(record).__name__}, expected an object")
        for field in RECORD_FIELDS:
            if field not in record:
                raise ValueError(f"{source}: record {index} has no field {field!r}")
        for field in TEXT_FIELDS:
            value = record[field]
            if not isinstance(value, str):
                raise TypeError(f"{source}: record {index}, field {field!r}: expected a string, got {value!r}")
            if not value.strip():
                raise ValueError(f"{source}: record {index}, field {field!r} is empty")
        for field, root in IMAGE_FIELDS.items():
            if not isinstance(record[field], str) or not record[field]:
                raise ValueError(f"{source}: record {index}, field {field!r}: expected an image path")
            path = roots[root] / record[field]
            if path not in checked:
                _check_image(path, index, field, source)
                checked.add(path)
        # Two edits of one image with one question (same `src`, or same kind when recorded) contradict each other.
        key = (record["image"], record.get("kind", record["src"]))
        if key in seen:
            raise ValueError(
                f"{source}: record {index}, field 'image': edits the same image and question as record {seen[key]}"
            )
        seen[key] = index
    return len(records)


def validate_file(path: str | Path, image_root: str | Path, rephrase_root: str | Path | None = None) -> int:
    """Validate an MMEdit JSON file (see ``validate_records``); returns the number of records."""
    path = Path(path)
    try:
        records = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: annotation file does not exist") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    count = validate_records(records, image_root, rephrase_root, source=str(path))
    LOG.debug("validated %d records in %s", count, path)
    return count
