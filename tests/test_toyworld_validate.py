"""The project's loader validation: bad MMEdit records fail with the record index and the field."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from easyedit_liveedit.toyworld import validate_file, validate_records


def _record(**changes):
    record = {
        "src": "what digit is shown in the image?",
        "pred": "seven",
        "alt": "three",
        "rephrase": "which digit is written here?",
        "image": "a.png",
        "image_rephrase": "b.png",
        "loc": "what is two plus five?",
        "loc_ans": "seven",
        "m_loc": "b.png",
        "m_loc_q": "is the digit odd or even?",
        "m_loc_a": "odd",
    }
    record.update(changes)
    return record


@pytest.fixture()
def root(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (8, 8), "white").save(tmp_path / name)
    return tmp_path


def test_good_records_pass(root):
    assert validate_records([_record(), _record(image="c.png")], root) == 2


@pytest.mark.parametrize("field", ["src", "alt", "image", "m_loc_a", "image_rephrase"])
def test_missing_field_names_index_and_field(root, field):
    bad = _record()
    del bad[field]
    with pytest.raises(ValueError, match=rf"record 1 has no field '{field}'"):
        validate_records([_record(image="c.png"), bad], root)


def test_empty_alt_is_an_error_not_a_silent_skip(root):
    with pytest.raises(ValueError, match=r"record 0, field 'alt' is empty"):
        validate_records([_record(alt="  ")], root)


def test_non_string_text_is_a_type_error(root):
    with pytest.raises(TypeError, match=r"record 0, field 'pred'"):
        validate_records([_record(pred=7)], root)


def test_missing_image_names_index_and_field(root):
    with pytest.raises(ValueError, match=r"record 1, field 'image_rephrase': image file .*nope.png does not exist"):
        validate_records([_record(), _record(image="c.png", image_rephrase="nope.png")], root)


def test_corrupt_image_names_index_and_field(root):
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match=r"record 0, field 'm_loc': image file .*broken.png is corrupt"):
        validate_records([_record(m_loc="broken.png")], root)


def test_truncated_image_is_corrupt(root):
    data = (root / "a.png").read_bytes()
    (root / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"record 0, field 'image': .*cut.png is corrupt"):
        validate_records([_record(image="cut.png")], root)


def test_conflicting_edits_are_rejected(root):
    with pytest.raises(ValueError, match=r"record 1, field 'image': edits the same image and question as record 0"):
        validate_records([_record(), _record(alt="one")], root)


def test_file_level_errors(root):
    with pytest.raises(ValueError, match="annotation file does not exist"):
        validate_file(root / "none.json", root)
    (root / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        validate_file(root / "bad.json", root)
    (root / "obj.json").write_text(json.dumps({"src": "x"}))
    with pytest.raises(TypeError, match="expected a JSON list"):
        validate_file(root / "obj.json", root)
    (root / "ok.json").write_text(json.dumps([_record()]))
    assert validate_file(root / "ok.json", root) == 1
