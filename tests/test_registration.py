"""`import easyedit_liveedit` makes LiveEdit reachable through EasyEdit's own tables and editor."""

import importlib
from pathlib import Path

import pytest
import torch

import easyedit_liveedit
from easyedit_liveedit import LiveEdit
from easyedit_liveedit.easyedit import compat
from easyedit_liveedit.easyedit.entry import apply_liveedit_to_multimodal_model
from easyedit_liveedit.easyedit.registration import register

ROOT = Path(__file__).resolve().parents[1]


def _tables():
    alg_dict = importlib.import_module("easyeditor.util.alg_dict")
    train_dict = importlib.import_module("easyeditor.util.alg_train_dict")
    return alg_dict.ALG_MULTIMODAL_DICT, train_dict.ALG_TRAIN_DICT


def test_registered_in_easyeditors_dicts():
    multimodal, train = _tables()
    assert multimodal["LiveEdit"] is apply_liveedit_to_multimodal_model
    assert train["LIVEEDIT"] is LiveEdit
    assert {"MEND", "SERAC", "IKE"} <= set(multimodal)


def test_editor_module_sees_the_same_dict_object():
    editor_module = importlib.import_module("easyeditor.editors.multimodal_editor")
    assert editor_module.ALG_MULTIMODAL_DICT is _tables()[0]
    trainer_module = importlib.import_module("easyeditor.trainer.BaseTrainer")
    assert trainer_module.ALG_TRAIN_DICT["LIVEEDIT"] is LiveEdit


def test_register_twice_is_harmless():
    before = [dict(t) for t in _tables()]
    register()
    register()
    assert [dict(t) for t in _tables()] == before


def test_refuses_to_overwrite_a_foreign_entry():
    multimodal, _ = _tables()
    original = multimodal["LiveEdit"]
    multimodal["LiveEdit"] = print  # somebody else's function
    try:
        with pytest.raises(RuntimeError, match="builtins"):
            register()
    finally:
        multimodal["LiveEdit"] = original


def test_hparams_classes_exposed_beside_easyeditors():
    import easyeditor

    assert easyeditor.LiveEditMultimodalHparams is easyedit_liveedit.LiveEditMultimodalHparams
    assert easyeditor.LiveEditMultimodalTrainingHparams is easyedit_liveedit.LiveEditMultimodalTrainingHparams


def test_multimodal_editor_dispatches_on_alg_name(tmp_path, monkeypatch):
    from easyeditor import MultimodalEditor

    hparams = easyedit_liveedit.LiveEditMultimodalHparams.from_hparams(ROOT / "hparams/LiveEdit/blip2.yaml")
    hparams.model_name = (torch.nn.Linear(2, 2), object())  # EasyEdit's way to hand over a built model
    monkeypatch.chdir(tmp_path)  # MultimodalEditor writes logs/ into the working directory
    with compat.cuda_to_cpu():
        editor = MultimodalEditor.from_hparams(hparams)
    assert editor.alg_name == "LiveEdit"
    assert editor.apply_algo is apply_liveedit_to_multimodal_model


def test_cli_prints_the_method_table():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "easyedit_liveedit"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "LiveEdit" in result.stdout and "MEND" in result.stdout and "LIVEEDIT" in result.stdout
