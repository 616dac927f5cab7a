"""LiveEdit through EasyEdit main's *own* ``MultimodalEditor`` on the small toy world: ``from_hparams``, ``edit`` with
``sequential_edit`` on and off (off: main's ``restore_after_edit`` undoes each edit through what the entry returns),
and ``edit_dataset``. The plugin's own editor, on both targets, is tested in ``test_easyedit_path.py`` and
``test_scoring_and_undo.py``; the PyPI wheel's own editor has no ``sequential_edit`` (``test_easyedit_path.py``).
"""

from __future__ import annotations

import importlib
import json
import os

import pytest
import torch
from helpers import TARGET, small_archives, toy_hparams

from easyedit_liveedit.easyedit.entry import attached_editor

pytestmark = pytest.mark.skipif(
    TARGET != "main", reason="EasyEdit main's own MultimodalEditor; this session runs the PyPI wheel"
)
METRICS = {"rewrite_acc", "rephrase_acc", "image_rephrase_acc", "locality_acc", "multimodal_locality_acc"}


@pytest.fixture(scope="module")
def archive(small_world, tmp_path_factory):
    """The session's LiveEdit archive (two steps of EasyEdit main's run() loop, the plugin's trainer subclass)."""
    return small_archives(tmp_path_factory, small_world) / "models" / "LiveEdit" / "blip2"


@pytest.fixture
def main_editor(small_world, archive, monkeypatch, tmp_path):
    """EasyEdit main's own editor, built by ``from_hparams`` from LiveEdit hparams with the archive above."""
    editors = importlib.import_module("easyeditor.editors.multimodal_editor")
    monkeypatch.chdir(tmp_path)  # main's editor writes logs/ into the working directory
    hparams = toy_hparams(small_world, "LiveEdit", archive=str(archive))
    with small_world.easyedit_patches():
        editor = editors.MultimodalEditor.from_hparams(hparams)
    assert type(editor) is editors.MultimodalEditor
    return editor


def _edit_inputs(world, n: int) -> dict:
    """``edit()``'s arguments for the first ``n`` eval records; main's editor opens image paths as given."""
    records = json.loads(world.split("vqa_eval").read_text())[:n]
    root = str(world.layout.images)
    return dict(
        prompts=[r["src"] for r in records],
        targets=[r["alt"] for r in records],
        image=[os.path.join(root, r["image"]) for r in records],
        rephrase_prompts=[r["rephrase"] for r in records],
        rephrase_image=[os.path.join(root, r["image_rephrase"]) for r in records],
        locality_inputs={
            "text": {"prompt": [r["loc"] for r in records], "ground_truth": [r["loc_ans"] for r in records]},
            "vision": {
                "prompt": [r["m_loc_q"] for r in records],
                "ground_truth": [r["m_loc_a"] for r in records],
                "image": [os.path.join(root, r["m_loc"]) for r in records],
            },
        },
    )


def _experts_seen_by_each_edit(editor) -> list[int]:
    """Wrap the editor's entry: the number of stored experts as each edit begins."""
    seen = []
    apply = editor.apply_algo

    def recording(model, *args, **kwargs):
        live = attached_editor(model)
        seen.append(0 if live is None else len(live.library))
        return apply(model, *args, **kwargs)

    editor.apply_algo = recording
    return seen


def test_main_lists_liveedit_beside_its_seven_multimodal_editors():
    alg_dict = importlib.import_module("easyeditor.util.alg_dict")
    assert sorted(alg_dict.ALG_MULTIMODAL_DICT) == sorted(
        ["GRACE", "IKE", "LiveEdit", "LoRA", "MEND", "SERAC", "SERAC_MULTI", "WISE"]
    )
    assert "LiveEdit" in importlib.import_module("easyeditor.editors.utils").CALLABLE_RESTORE_ALGS


def test_main_editor_single_edits_are_each_undone(small_world, main_editor):
    """Guards: with ``sequential_edit=False`` main's ``restore_after_edit`` removes each edit's expert before the next
    edit (each meets an empty library, and none is left), and no backbone weight changes."""
    before = {k: v.clone() for k, v in main_editor.model.state_dict().items()}
    seen = _experts_seen_by_each_edit(main_editor)
    with small_world.easyedit_patches():
        metrics, edited, weights_copy = main_editor.edit(**_edit_inputs(small_world, 3), sequential_edit=False)
    assert seen == [0, 0, 0]
    assert len(attached_editor(main_editor.model).library) == 0
    assert callable(weights_copy)
    assert len(metrics) == 3 and METRICS <= set(metrics[0]["post"])
    assert all(torch.equal(before[k], v) for k, v in main_editor.model.state_dict().items())


def test_main_editor_sequential_edits_accumulate(small_world, main_editor):
    seen = _experts_seen_by_each_edit(main_editor)
    with small_world.easyedit_patches():
        metrics, _, _ = main_editor.edit(**_edit_inputs(small_world, 3), sequential_edit=True)
    assert seen == [0, 1, 2]
    assert len(attached_editor(main_editor.model).library) == 3
    assert len(metrics) == 3 and METRICS <= set(metrics[-1]["post"])
    # text-only locality never routes to an expert: main's top-1 match over the whole sequence stays 1
    assert all(m["post"]["locality_acc"] == 1.0 for m in metrics)


def test_main_edit_dataset_edits_every_record(small_world, main_editor):
    """Main's ``edit_dataset`` never undoes (for any method): the records' experts accumulate."""
    from easyeditor import VQADataset

    seen = _experts_seen_by_each_edit(main_editor)
    with small_world.easyedit_patches():
        ds = VQADataset(str(small_world.split("vqa_eval")), size=4, config=main_editor.hparams)
        metrics, _, _ = main_editor.edit_dataset(ds, verbose=False)
    assert seen == [0, 1, 2, 3]
    assert len(metrics) == 4 and all(METRICS <= set(m["post"]) for m in metrics)
