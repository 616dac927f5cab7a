"""``examples/multimodal_edit.py`` runs, function by function, and ``examples/train_and_edit_toy.py`` (the README's
train-and-edit code) runs, on the small toy world and whichever EasyEdit target the session runs (the same code on
both): meta-training writes the archive the editing functions then load."""

from __future__ import annotations

import importlib.util
import json
import math
import re

import pytest

from easyedit_liveedit.toyworld.layout import CACHE_ENV, PROJECT_ROOT

# a few steps of EasyEdit's loop on a few records: the functions must run, not train well
TRAINING = dict(
    size=24, val_size=8, max_iters=6, batch_size=4, val_batch_size=4, val_steps=2, log_interval=3, val_interval=3
)
METRICS = {"rewrite_acc", "rephrase_acc", "image_rephrase_acc", "locality_acc", "multimodal_locality_acc"}


@pytest.fixture(scope="module")
def examples(small_world):
    spec = importlib.util.spec_from_file_location("multimodal_edit", PROJECT_ROOT / "examples" / "multimodal_edit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(small_world.layout.root.parent))  # toyworld.load("small") finds the session's
        patch.chdir(PROJECT_ROOT)  # the functions name the YAMLs as EasyEdit's examples do, from the project root
        yield module


@pytest.mark.parametrize("kind", ["VQA", "Caption"])
def test_train_then_test_run_on_the_toy_world(examples, kind, tmp_path):
    archive = getattr(examples, f"train_LiveEdit_Blip2OPT_{kind}")(
        world="small", results_dir=str(tmp_path), **TRAINING
    )
    assert archive.is_file()
    result = getattr(examples, f"test_LiveEdit_Blip2OPT_{kind}")(world="small", size=3, archive=str(archive))
    assert set(result) == METRICS and all(0.0 <= v <= 1.0 for v in result.values())


def test_edit_runs_on_the_toy_world(examples, tmp_path):
    archive = examples.train_LiveEdit_Blip2OPT_VQA(world="small", results_dir=str(tmp_path), **TRAINING)
    result = examples.edit_LiveEdit_Blip2OPT_VQA(world="small", size=2, archive=str(archive))
    assert set(result) == METRICS and not any(math.isnan(v) for v in result.values())
    assert result["locality_acc"] == 1.0  # a text-only question never routes to an expert


def test_every_example_function_is_run_here():
    """Guards: a function added to the examples without a smoke test here fails this test."""
    source = (PROJECT_ROOT / "examples" / "multimodal_edit.py").read_text()
    tested = {"train_LiveEdit_Blip2OPT_VQA", "train_LiveEdit_Blip2OPT_Caption", "test_LiveEdit_Blip2OPT_VQA",
              "test_LiveEdit_Blip2OPT_Caption", "edit_LiveEdit_Blip2OPT_VQA"}  # fmt: skip
    assert set(re.findall(r"^def ((?:train|test|edit)_LiveEdit_\w+)\(", source, re.M)) == tested


def test_train_and_edit_toy_runs_on_the_toy_world(examples, small_world, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "train_and_edit_toy", PROJECT_ROOT / "examples" / "train_and_edit_toy.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # the script trains on the whole train split but what validation holds out: keep 16 of the small world's records
    held_out = len(json.loads(small_world.split("vqa_train").read_text())) - 16
    training = {**{k: v for k, v in TRAINING.items() if k != "size"}, "val_size": held_out, "final_eval": False}
    module.train(small_world, results_dir=str(tmp_path), **training)
    module.edit_100(small_world, size=3, archive=str(tmp_path / "models" / "LiveEdit" / "blip2"))
    printed = capsys.readouterr().out
    assert "3 sequential edits; experts in the library: 3" in printed and "multimodal_locality_acc" in printed
