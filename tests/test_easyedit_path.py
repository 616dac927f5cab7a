"""LiveEdit through EasyEdit's own machinery on the small toy world: train, archive, edit, edit_dataset."""

import importlib
import json

import pytest
import torch
from helpers import small_liveedit_hparams

from easyedit_liveedit import LiveEditMultimodalTrainer, MultimodalEditor
from easyedit_liveedit.easyedit import compat
from easyedit_liveedit.easyedit.entry import editor_for

METRICS = {"rewrite_acc", "rephrase_acc", "image_rephrase_acc", "locality_acc", "multimodal_locality_acc"}


@pytest.fixture(scope="module")
def archive(small_world, tmp_path_factory):
    """A LiveEdit archive meta-trained for a few steps by EasyEdit's run() loop on the small world."""
    from easyeditor import VQADataset

    results = tmp_path_factory.mktemp("results")
    hparams = small_liveedit_hparams(
        small_world, training=True, batch_size=4, val_batch_size=4, max_iters=24, log_interval=8,
        val_interval=12, val_steps=2, results_dir=str(results), filter_lambda=1.0,
    )  # fmt: skip
    with small_world.easyedit_patches():
        train = VQADataset(str(small_world.split("vqa_train")), size=48, config=hparams)
        val = VQADataset(str(small_world.split("vqa_eval")), size=8, config=hparams)
        trainer = LiveEditMultimodalTrainer(hparams, train, val)
        trainer.run()
    return results


def test_training_writes_an_archive_and_easyedit_metric_names(archive):
    saved = torch.load(archive / "models" / "LiveEdit" / "blip2", weights_only=True)
    assert {"model", "opt", "val_stats", "step"} <= set(saved)
    assert all(
        k.startswith(("generator.", "edit_extractor.", "input_extractor.", "sentinel", "expert_norm."))
        for k in saved["model"]
    )
    results = json.loads((archive / "results.json").read_text())["results"]
    for name in ("inner/acc_val", "edit/acc_val", "image_rephrase/acc_val", "loc/acc_val", "image_loc/acc_val"):
        assert 0.0 <= results[name] <= 1.0, name
    assert results["loc/acc_val"] == 1.0  # text-only inputs never route to an expert
    assert results["loss/filter_val"] > 0.0  # the hard-filter calibration term is on in this run


@pytest.fixture
def editing(small_world, archive):
    hparams = small_liveedit_hparams(small_world, archive=str(archive / "models" / "LiveEdit" / "blip2"))
    with small_world.easyedit_patches():
        editor = MultimodalEditor.from_hparams(hparams)
    return editor, hparams


def _records(world, n):
    return json.loads(world.split("vqa_eval").read_text())[:n]


def test_sequential_edit_with_main_signature(small_world, editing):
    editor, hparams = editing
    records = _records(small_world, 3)
    before = {k: v.clone() for k, v in editor.model.state_dict().items()}
    with small_world.easyedit_patches():
        metrics, edited, weights_copy = editor.edit(
            prompts=[r["src"] for r in records],
            targets=[r["alt"] for r in records],
            image=[r["image"] for r in records],
            rephrase_prompts=[r["rephrase"] for r in records],
            rephrase_image=[r["image_rephrase"] for r in records],
            locality_inputs={
                "text": {"prompt": [r["loc"] for r in records], "ground_truth": [r["loc_ans"] for r in records]},
                "vision": {
                    "prompt": [r["m_loc_q"] for r in records],
                    "ground_truth": [r["m_loc_a"] for r in records],
                    "image": [r["m_loc"] for r in records],
                },
            },
            sequential_edit=True,
            verbose=False,
        )
    assert weights_copy == {}
    assert len(metrics) == 3 and set(metrics[0]["post"]) == METRICS
    assert len(editor_for(editor.model, hparams).library) == 3  # edits accumulate
    after = editor.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the backbone is never changed


def test_edit_dataset_single_editing_undoes_each_edit(small_world, editing):
    from easyeditor import VQADataset

    editor, hparams = editing
    with small_world.easyedit_patches():
        ds = VQADataset(str(small_world.split("vqa_eval")), size=4, config=hparams)
        metrics, _, _ = editor.edit_dataset(ds, verbose=False)
    assert len(metrics) == 4
    assert len(editor_for(editor.model, hparams).library) == 0
    for m in metrics:
        assert set(m["post"]) == METRICS
        assert m["post"]["locality_acc"] == 1.0  # text-only locality never routes to an expert


def test_wheel_multimodal_editor_runs_liveedit(small_world, archive, monkeypatch, tmp_path):
    wheel_editor = importlib.import_module("easyeditor.editors.multimodal_editor").MultimodalEditor
    hparams = small_liveedit_hparams(small_world, archive=str(archive / "models" / "LiveEdit" / "blip2"))
    record = _records(small_world, 1)[0]
    monkeypatch.chdir(tmp_path)  # the wheel's editor writes logs/ into the working directory
    with small_world.easyedit_patches(), compat.cuda_to_cpu():
        editor = wheel_editor.from_hparams(hparams)
        metrics, edited, _ = editor.edit(
            prompts=[record["src"]], targets=[record["alt"]], image=[record["image"]],
            locality_inputs={"text": {"prompt": [record["loc"]], "ground_truth": [record["loc_ans"]]}},
        )  # fmt: skip
    assert metrics[0]["post"]["locality_acc"] == 1.0
    assert "rewrite_acc" in metrics[0]["pre"]


def test_missing_archive_names_the_key(small_world):
    hparams = small_liveedit_hparams(small_world)
    with pytest.raises(ValueError, match="'archive'"):
        editor_for(small_world.load_model(), hparams)


def test_the_learning_rate_drops_by_the_decay_rate_after_the_decay_steps(small_world, tmp_path):
    """Guards the authors' schedule: Adam's learning rate is multiplied by lr_decay_rate once, after lr_decay_steps
    optimiser steps."""
    from easyeditor import VQADataset

    hparams = small_liveedit_hparams(
        small_world, training=True, batch_size=2, val_batch_size=2, max_iters=6, log_interval=100,
        val_interval=100, val_steps=1, results_dir=str(tmp_path), lr=1e-3, lr_decay_steps=3, lr_decay_rate=0.1,
        final_eval=False,
    )  # fmt: skip
    with small_world.easyedit_patches():
        train = VQADataset(str(small_world.split("vqa_train")), size=12, config=hparams)
        val = VQADataset(str(small_world.split("vqa_eval")), size=2, config=hparams)
        trainer = LiveEditMultimodalTrainer(hparams, train, val)
        seen = []
        step = trainer.train_step

        def recording(batch):
            info = step(batch)
            seen.append(info.get("lr"))
            return info

        trainer.train_step = recording
        trainer.run()
    # the rate for the next step, after each optimiser step: three steps at 1e-3, then 1e-4
    assert seen == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-4])
