"""Property-based fuzzing (hypothesis) of the two readers of untrusted files: the MMEdit record validator and the
expert-library loader. Property: whatever the input, the reader either accepts it (and then it is sound) or raises
its own clear error (``TypeError``/``ValueError`` naming the source; ``LibraryFileError`` naming the file) - never
another exception. 1,000 cases each (``FUZZ_EXAMPLES`` overrides it), no deadline: the machine is shared.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from easyedit_liveedit.easyedit.validate import IMAGE_FIELDS, RECORD_FIELDS, TEXT_FIELDS, validate_records
from easyedit_liveedit.liveedit.library import ExpertLibrary
from easyedit_liveedit.liveedit.networks import Experts
from easyedit_liveedit.liveedit.storage import MANIFEST, LibraryFileError, _manifest_checksum

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "1000"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
IDENTITY = {"backbone": "Fuzz", "hidden_size": 6, "rank": 2, "networks": "f00d"}


# ---------------------------------------------------------------- the record validator
@pytest.fixture(scope="module")
def image_root():
    root = Path(tempfile.mkdtemp(prefix="fuzz-images-"))
    Image.new("RGB", (8, 8), "white").save(root / "a.png")
    Image.new("RGB", (8, 8), "black").save(root / "b.png")
    data = (root / "a.png").read_bytes()
    (root / "cut.png").write_bytes(data[: len(data) // 2])
    (root / "text.png").write_text("not an image")
    (root / "dir.png").mkdir()
    yield root
    shutil.rmtree(root)


json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=6), inner, max_size=3), max_leaves=8)  # fmt: skip
texts = st.sampled_from(["what digit is this?", "seven", "", "   ", "\x00", "é"]) | json_values
image_names = st.sampled_from(["a.png", "b.png", "cut.png", "text.png", "dir.png", "missing.png", "", "../a.png",
                               "a.png\x00", "x" * 300]) | json_values  # fmt: skip


@st.composite
def records(draw):
    record = {}
    for field in RECORD_FIELDS:
        if draw(st.integers(0, 15)) == 0:
            continue  # a missing field
        record[field] = draw(image_names if field in IMAGE_FIELDS else texts)
    if draw(st.booleans()):
        record["kind"] = draw(texts)
    return record


@FUZZ
@given(data=st.lists(records(), max_size=4) | json_values)
def test_the_record_validator_accepts_sound_records_or_names_the_problem(image_root, data):
    """Guards: on any JSON value the validator returns the record count of a sound list, or raises ``TypeError`` /
    ``ValueError`` naming the source and (for a record) its index - never another exception."""
    try:
        count = validate_records(data, image_root, source="fuzz.json")
    except (TypeError, ValueError) as error:
        assert str(error).startswith("fuzz.json: "), error
        if isinstance(data, list) and data and "record" in str(error):
            assert any(f"record {i}" in str(error) for i in range(len(data))), error
        return
    assert count == len(data)
    for record in data:  # accepted: every field present, every text non-empty, every image decodes
        assert all(isinstance(record[f], str) and record[f].strip() for f in TEXT_FIELDS)
        assert all(record[f] in ("a.png", "b.png", "../a.png") for f in IMAGE_FIELDS)


# ---------------------------------------------------------------- the library loader
@pytest.fixture(scope="module")
def pristine():
    """A small library folder (two sealed shards; a journal holding one add, then one removal), and the states a
    reader may legitimately see: the full one, and for a journal cut short, the states before its last records."""
    root = Path(tempfile.mkdtemp(prefix="fuzz-library-"))
    library = ExpertLibrary(dtype=torch.float16)
    library.open(root / "lib", IDENTITY, shard_size=3)
    g = torch.Generator().manual_seed(0)
    states = []
    for i in range(7):  # sealed into shards after the 3rd and 6th
        shapes = ((2, 4), (2, 4), (2, 6), (2, 6))
        library.add(Experts(*(torch.randn(1, *s, generator=g) for s in shapes)), keys=[f"k{i}"])
        states.append(library.state_dict())
    library.remove(1)
    library.close()
    files = {p.name: p.read_bytes() for p in (root / "lib").iterdir()}
    yield files, library.state_dict(), [states[5], states[6]]
    shutil.rmtree(root)


mutations = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.floats(0, 1), st.integers(1, 255)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("delete")),
    st.tuples(st.just("field"), st.sampled_from(["identity", "layout", "shards", "removed", "next_id", "next_file",
                                                 "journal", "format", "version", "shard"]),
              json_values | st.sampled_from(["shard-000001.safetensors", "../x", "journal-000009.bin"])),
)  # fmt: skip


@FUZZ
@given(target=st.sampled_from(["manifest", "shard", "journal"]), mutation=mutations, writable=st.booleans())
def test_the_library_loader_loads_an_intact_library_or_names_the_damage(pristine, target, mutation, writable):
    """Guards: whatever is done to one file of a library folder (cut, a byte changed, junk appended, deleted, a
    manifest field replaced with its checksum recomputed), ``load`` and ``open`` raise ``LibraryFileError`` naming
    the folder's file, or give back the saved experts exactly - never another exception. The only other outcomes
    allowed: a journal cut short loses its last records (appends that never returned), and a manifest rewritten
    with a valid checksum (deliberate, not damage) may list fewer experts, never different ones."""
    files, final, earlier = pristine
    with tempfile.TemporaryDirectory(prefix="fuzz-case-") as tmp:
        folder = Path(tmp) / "lib"
        folder.mkdir()
        for name, data in files.items():
            (folder / name).write_bytes(data)
        prefix = {"manifest": MANIFEST, "shard": "shard-", "journal": "journal-"}[target]
        name = max(n for n in files if n.startswith(prefix))  # the manifest, the last shard, the journal
        _mutate(folder / name, mutation)
        kind = "truncate" if mutation[0] == "field" and target != "manifest" else mutation[0]  # cut in half
        library = ExpertLibrary()
        try:
            if writable:
                library.open(folder, IDENTITY)
                library.close()
            else:
                library.load(folder, identity=IDENTITY)
        except LibraryFileError as error:
            assert str(folder) in str(error), error
            return
        got = library.state_dict()
        if kind == "field":  # rewritten, not damaged: what it lists must be the saved experts
            rows = [final["ids"].tolist().index(i) for i in got["ids"].tolist() if i in final["ids"].tolist()]
            assert len(rows) == len(got["ids"])
            assert all(torch.equal(got[k], final[k][rows]) for k in ("psi", "phi", "U", "V", "key"))
            return
        allowed = [final, *earlier] if target == "journal" and kind == "truncate" else [final]
        assert any(_equal(got, state) for state in allowed)


def _equal(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in ("ids", "psi", "phi", "U", "V", "key"))


def _mutate(path: Path, mutation: tuple) -> None:
    kind = mutation[0]
    data = path.read_bytes()
    if kind == "truncate":
        path.write_bytes(data[: int(mutation[1] * len(data))])
    elif kind == "flip":
        at = min(int(mutation[1] * len(data)), len(data) - 1)
        path.write_bytes(data[:at] + bytes([data[at] ^ mutation[2]]) + data[at + 1 :])
    elif kind == "append":
        path.write_bytes(data + mutation[1])
    elif kind == "delete":
        path.unlink()
    elif path.name == MANIFEST:  # a field replaced, the checksum recomputed: the structure checks must hold
        body = json.loads(data)
        body.pop("checksum")
        body[mutation[1]] = mutation[2]
        path.write_text(json.dumps({**body, "checksum": _manifest_checksum(body)}))
    else:
        path.write_bytes(data[: len(data) // 2])
