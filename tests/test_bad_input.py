"""Bad input never corrupts state: every public entry names what is wrong and where, and the library is untouched.

Entries: ``MultimodalEditor.edit`` / ``edit_dataset`` (EasyEdit main's API), the registered editing entry
``apply_liveedit_to_multimodal_model``, the trainer and ``train_archive``, the comparison (``run_method``), the MMEdit
file validator (the loader check; the CLI's is in ``test_cli.py``). The library is a folder (hparams
``library_path``), so "untouched" means its files too.
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
        (
            {"locality_inputs": {"text": {"prompt": "x", "ground_truth": ["a", "b"]}}},
            r"locality_inputs\['text'\]\['prompt'\] must be a list with one entry per edit, got the string 'x'",
        ),
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


# ---------------------------------------------------------------- records EasyEdit's datasets drop or fail on
def _bad_file(small_world, folder: Path, **changes) -> Path:
    """Two eval records of the small world in a file of their own, the second changed by ``changes`` (None deletes)."""
    records = json.loads(small_world.split("vqa_eval").read_text())[2:4]
    for key, value in changes.items():
        if value is None:
            del records[1][key]
        else:
            records[1][key] = value
    path = folder / "bad.json"
    path.write_text(json.dumps(records))
    return path


def test_edit_dataset_refuses_a_record_easyedit_skips_silently(small_world, editing, tmp_path):
    """Guards records in = records edited through ``edit_dataset``: EasyEdit's ``VQADataset`` drops a record whose
    ``alt`` is empty without a word (2 records in, 1 item); the editor names the record and the field instead, and
    the library and its folder are untouched. Seen failing (1 edit made, no error) with the ``validate_dataset`` call
    removed from ``edit_dataset``."""
    editor, hparams, _, liveedit, folder = editing
    before = _snapshot(liveedit, folder)
    with small_world.easyedit_patches():
        from easyeditor import VQADataset

        ds = VQADataset(str(_bad_file(small_world, tmp_path, alt="")), size=2, config=hparams)
    assert len(ds) == 1  # what EasyEdit made of two records
    message = r"LiveEdit edit_dataset: VQADataset: record 1, field 'alt' is empty"
    with small_world.easyedit_patches(), pytest.raises(ValueError, match=message):
        editor.edit_dataset(ds, sequential_edit=True, verbose=False)
    assert _same(_snapshot(liveedit, folder), before)


def test_the_trainer_train_archive_and_the_comparison_name_the_record_and_the_field(small_world, tmp_path):
    """Guards validation before any training or editing: the trainer refuses a dataset built from a record EasyEdit
    skipped (empty ``alt``), naming the dataset, the record and the field; ``train_archive`` and the comparison refuse
    a record without ``m_loc`` (EasyEdit's dataset: a bare ``KeyError``), naming the file, the record and the field.
    Seen failing with the ``validate_dataset`` call removed from the trainer (it went on to build the backbone), the
    ``validate_file`` call removed from ``train_archive`` (``KeyError: 'm_loc'``) and from ``run_method`` (it went on
    to the backbone)."""
    from easyeditor import VQADataset

    from easyedit_liveedit.bench import archives
    from easyedit_liveedit.bench.engine import CompareSettings, MethodRun, run_method
    from easyedit_liveedit.easyedit.trainer import LiveEditMultimodalTrainer

    training = toy_hparams(small_world, "LiveEdit", training=True, results_dir=str(tmp_path / "results"))
    with small_world.easyedit_patches():
        empty_alt = VQADataset(str(_bad_file(small_world, tmp_path, alt="")), config=training)
    message = r"LiveEditMultimodalTrainer: train_set \(VQADataset\): record 1, field 'alt' is empty"
    with pytest.raises(ValueError, match=message):
        LiveEditMultimodalTrainer(training, empty_alt, empty_alt)

    no_m_loc = _bad_file(small_world, tmp_path, m_loc=None)
    with pytest.raises(ValueError, match=rf"{no_m_loc}: record 1 has no field 'm_loc'"):
        archives.train_archive("LiveEdit", training, no_m_loc, "VQADataset", tmp_path / "split", val_size=1)
    assert not (tmp_path / "split").exists()  # nothing was written before the check

    hparams = toy_hparams(small_world, "LiveEdit")
    rows = run_method(MethodRun("LiveEdit", hparams=hparams), None, CompareSettings(str(no_m_loc), edits=[1]), False)
    assert rows[0].status == f"error (ValueError: {no_m_loc}: record 1 has no field 'm_loc')"


def test_training_data_may_repeat_an_edit_that_an_edit_sequence_may_not(small_world, tmp_path):
    """Two records editing one image with one question contradict each other in one sequence of edits, so
    ``edit_dataset`` and the comparison refuse them; as training data they are harmless, and the trainer takes them.
    Seen failing with the trainer's check left at ``unique_edits=True``."""
    from easyeditor import VQADataset

    from easyedit_liveedit.easyedit.trainer import LiveEditMultimodalTrainer
    from easyedit_liveedit.easyedit.validate import validate_dataset

    first = json.loads(small_world.split("vqa_eval").read_text())[2]
    twice = _bad_file(
        small_world, tmp_path, image=first["image"], src=first["src"], kind=first.get("kind", first["src"])
    )
    training = toy_hparams(small_world, "LiveEdit", training=True, results_dir=str(tmp_path / "results"))
    with small_world.easyedit_patches():
        dataset = VQADataset(str(twice), config=training)
    with pytest.raises(ValueError, match="record 1, field 'image': edits the same image and question as record 0"):
        validate_dataset(dataset, "edit_dataset")
    with small_world.easyedit_patches():
        LiveEditMultimodalTrainer(training, dataset, dataset)  # no error


def test_a_library_path_that_is_a_file_is_refused_naming_the_key(small_world, tmp_path_factory, tmp_path):
    """Guards: ``library_path`` naming an existing file fails with an error naming the key and the YAML, before any
    editor is built (it was a bare ``FileExistsError`` from deep in the library's storage). Seen failing with the
    editing hparams' ``check_paths`` override removed."""
    archive = small_archives(tmp_path_factory, small_world) / "models" / "LiveEdit" / "blip2"
    (tmp_path / "notes.txt").write_text("not a library")
    hparams = toy_hparams(small_world, "LiveEdit", archive=str(archive), library_path=str(tmp_path / "notes.txt"))
    model = small_world.load_model()
    with pytest.raises(
        ValueError, match=r"toy-blip2.yaml: key 'library_path' points to .*notes.txt', which is a file"
    ):
        editor_for(model, hparams)
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0
