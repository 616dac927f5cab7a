"""Bad input never corrupts state: every public entry names what is wrong and where, and the library is untouched.

Entries: ``MultimodalEditor.edit`` / ``edit_dataset`` (EasyEdit main's API), the registered editing entry
``apply_liveedit_to_multimodal_model``, the MMEdit file validator (the loader check; the CLI's is in
``test_cli.py``). The library is a folder (hparams ``library_path``), so "untouched" means its files too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import small_archives, toy_hparams
from PIL import Image

from easyedit_liveedit import MultimodalEditor
from easyedit_liveedit.easyedit import validate
from easyedit_liveedit.easyedit.entry import apply_liveedit_to_multimodal_model, editor_for


# ---------------------------------------------------------------- the checks themselves
@pytest.fixture()
def images(tmp_path) -> Path:
    Image.new("RGB", (8, 8), "white").save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_text("not an image")
    return tmp_path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prompts": []}, "no edits"),
        ({"prompts": ["q", ""]}, r"prompts\[1\] is empty"),
        ({"targets": ["a", 3]}, r"targets\[1\]: expected a string, got int"),
        ({"targets": ["a"]}, "targets has 1 entries for 2 edits"),
        ({"image": ["a.png", "gone.png"]}, r"image\[1\]: image file .*gone.png does not exist"),
        ({"image": ["a.png", "cut.png"]}, r"image\[1\]: image file .*cut.png is corrupt"),
        ({"image": ["text.png", "a.png"]}, r"image\[0\]: image file .*text.png is corrupt or not an image"),
        ({"image": {"a": 1}}, "image must be a string or a list"),
        ({"rephrase_prompts": ["r", None]}, r"rephrase_prompts\[1\]: expected a string, got NoneType"),
        ({"rephrase_image": ["a.png", "cut.png"]}, r"rephrase_image\[1\]: image file .*cut.png is corrupt"),
        ({"locality_inputs": {"text": {"prompt": ["x", "y"]}}}, r"locality_inputs\['text'\] must be a dict with"),
        ({"locality_inputs": {"text": {"prompt": ["x", ""], "ground_truth": ["a", "b"]}}}, r"\['prompt'\]\[1\] is"),
        ({"locality_inputs": {"sound": {}}}, "keys 'text' and/or 'vision'"),
    ],
)
def test_edit_arguments_name_the_argument_and_the_edit(images, changes, message):
    arguments = {"prompts": ["q1", "q2"], "targets": ["a1", "a2"], "image": ["a.png", "a.png"]}
    arguments.update(changes)
    with pytest.raises((TypeError, ValueError), match=message):
        validate.validate_edit_arguments(**arguments, image_root=images)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image": torch.full((3, 4, 4), float("nan"))}, r"request 1, field 'image': .*48 non-finite"),
        ({"image_rephrase": torch.tensor([[[float("inf")]]])}, r"request 1, field 'image_rephrase': .*non-finite"),
        ({"image": torch.zeros(2, 3, 4, 4)}, r"request 1, field 'image': expected a floating \(C, H, W\)"),
        ({"image": torch.zeros(3, 4, 4, dtype=torch.long)}, "expected a floating"),
        ({"image": "a.png"}, r"request 1, field 'image': expected an image tensor, got str"),
        ({"prompt": ""}, r"request 1, field 'prompt' is empty"),
        ({"target": None}, r"request 1, field 'target': expected a string"),
    ],
)
def test_requests_name_the_request_and_the_field(change, message):
    good = {"prompt": "q", "target": "a", "image": torch.zeros(3, 4, 4)}
    with pytest.raises((TypeError, ValueError), match=message):
        validate.validate_requests([good, {**good, **change}], "edit")
    missing = dict(good)
    del missing["target"]
    with pytest.raises(ValueError, match="request 0 has no field 'target'"):
        validate.validate_requests([missing])


# ---------------------------------------------------------------- through the editor, with a library folder
@pytest.fixture()
def editing(small_world, tmp_path_factory, tmp_path, monkeypatch):
    """EasyEdit's ``MultimodalEditor`` (main's API) with LiveEdit on the small world, its library in a folder, two
    edits already committed."""
    monkeypatch.chdir(tmp_path)  # MultimodalEditor writes logs/ into the working directory
    archive = small_archives(tmp_path_factory, small_world) / "models" / "LiveEdit" / "blip2"
    hparams = toy_hparams(small_world, "LiveEdit", archive=str(archive), library_path=str(tmp_path / "library"))
    with small_world.easyedit_patches():
        editor = MultimodalEditor.from_hparams(hparams)
    records = json.loads(small_world.split("vqa_eval").read_text())
    with small_world.easyedit_patches():
        editor.edit(**_arguments(records[:2]), sequential_edit=True, verbose=False)
    liveedit = editor_for(editor.model, hparams)
    yield editor, hparams, records, liveedit, tmp_path / "library"
    liveedit.library.close()


def _arguments(records: list[dict]) -> dict:
    return {
        "prompts": [r["src"] for r in records],
        "targets": [r["alt"] for r in records],
        "image": [r["image"] for r in records],
        "rephrase_prompts": [r["rephrase"] for r in records],
        "rephrase_image": [r["image_rephrase"] for r in records],
    }


def _snapshot(liveedit, folder: Path) -> tuple:
    files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "lock"}
    return liveedit.library.ids(), {k: v.clone() for k, v in liveedit.library.state_dict().items()}, files


def _same(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and a[2] == b[2] and all(torch.equal(a[1][k], b[1][k]) for k in a[1])


def test_bad_input_through_the_editor_api_changes_nothing(small_world, editing, request):
    """Guards: through ``MultimodalEditor.edit`` / ``edit_dataset`` and the registered entry, a missing, empty or
    wrongly typed field, a missing / truncated / non-image file, a prompt longer than the model reads and a NaN in
    an image tensor each raise an error naming the argument or request and the field, before anything is edited:
    the library's experts and the bytes of its folder are exactly as before."""
    editor, hparams, records, liveedit, folder = editing
    assert liveedit.library.ids() == [0, 1]
    before = _snapshot(liveedit, folder)
    images = Path(hparams.coco_image)
    data = (images / records[2]["image"]).read_bytes()
    cut, notes = images / "cut.png", images / "notes.png"  # bad files in the session's world: removed afterwards
    request.addfinalizer(lambda: [path.unlink(missing_ok=True) for path in (cut, notes)])
    cut.write_bytes(data[: len(data) // 3])
    notes.write_text("a text file")
    good = _arguments(records[2:4])
    long_prompt = " ".join(["what digit is shown in the image?"] * 40)
    cases = {
        "empty target": ({**good, "targets": ["three", " "]}, r"targets\[1\] is empty"),
        "wrong type": ({**good, "prompts": ["q", 7]}, r"prompts\[1\]: expected a string, got int"),
        "missing file": ({**good, "image": [records[2]["image"], "none.png"]}, r"image\[1\]: .*does not exist"),
        "truncated file": ({**good, "rephrase_image": ["cut.png", "cut.png"]}, r"rephrase_image\[0\]: .*corrupt"),
        "not an image": ({**good, "image": ["notes.png", "notes.png"]}, r"image\[0\]: .*not an image"),
        "too long": ({**good, "prompts": [good["prompts"][0], long_prompt]}, r"request 1, field 'prompt': .* tokens"),
    }
    for name, (arguments, message) in cases.items():
        with small_world.easyedit_patches(), pytest.raises((TypeError, ValueError), match=message):
            editor.edit(**arguments, sequential_edit=True, verbose=False)
        assert _same(_snapshot(liveedit, folder), before), name

    from easyeditor import VQADataset

    with small_world.easyedit_patches():
        ds = VQADataset(str(small_world.split("vqa_eval")), size=4, config=hparams)
    items = [dict(item) for item in ds]
    items[3]["image_rephrase"] = items[3]["image_rephrase"].clone()
    items[3]["image_rephrase"][0, 0, 0] = float("nan")
    with small_world.easyedit_patches(), pytest.raises(ValueError, match=r"request 3, field 'image_rephrase'.*NaN"):
        editor.edit_dataset(items, sequential_edit=True, verbose=False)
    assert _same(_snapshot(liveedit, folder), before)

    request = {"prompt": records[5]["src"], "target": records[5]["alt"], "image": torch.full((3, 32, 32), torch.nan)}
    with pytest.raises(ValueError, match=r"LiveEdit: request 0, field 'image': .*non-finite"):
        apply_liveedit_to_multimodal_model(editor.model, editor.tok, [request], hparams)
    assert _same(_snapshot(liveedit, folder), before)


def test_a_library_folder_keeps_edits_across_editors_and_never_applies_one_twice(small_world, editing):
    """Guards the ``library_path`` hparam: edits are committed to the folder, a new editor on the same folder starts
    with them, and a request already committed is not applied again."""
    editor, hparams, records, liveedit, folder = editing
    with small_world.easyedit_patches():
        editor.edit(**_arguments(records[:3]), sequential_edit=True, verbose=False)  # 0 and 1 are already there
    assert liveedit.library.ids() == [0, 1, 2]
    liveedit.library.close()
    with small_world.easyedit_patches():
        again = MultimodalEditor.from_hparams(hparams)
    reopened = editor_for(again.model, hparams)
    try:
        assert reopened.library.ids() == [0, 1, 2]
        assert torch.equal(reopened.library.state_dict()["U"], liveedit.library.state_dict()["U"])
    finally:
        reopened.library.close()
