"""EasyEdit's built-in MEND on the small toy world: MultimodalTrainer meta-trains it, then sequential edits.

The wheel's ``MendMultimodalRewriteExecutor.apply_to_model`` fails at the first edit (label strings where
tensors are expected; ``baseline_fixes`` mends it), so edits go through ``easyeditor.trainer.algs.MEND.edit``
directly, as the executor would, and each edit's new weights are written into the model in place (no restoring):
sequential editing. A functional model returned by one ``edit`` cannot take the next ``edit`` (MEND's hooks sit on
the original module), hence the copy back.
"""

from __future__ import annotations

import importlib

import pytest
import torch

import easyedit_liveedit  # noqa: F401  (applies the EasyEdit shims)
from easyedit_liveedit.easyedit.compat import baseline_fixes
from easyedit_liveedit.toyworld.layout import PROJECT_ROOT

MEND_TRAINING_YAML = PROJECT_ROOT / "hparams/TRAINING/MEND/toy-blip2.yaml"
MEND_EDITING_YAML = PROJECT_ROOT / "hparams/MEND/toy-blip2.yaml"


@pytest.fixture(scope="module")
def trained(small_world, tmp_path_factory):
    """EasyEdit's MultimodalTrainer with MEND, a few steps on the train split (archive in a temporary folder)."""
    training_hparams = importlib.import_module("easyeditor.trainer.training_hparams")
    hparams = small_world.apply_paths(
        training_hparams.MENDMultimodalTrainingHparams.from_hparams(str(MEND_TRAINING_YAML))
    )
    hparams.max_iters, hparams.val_steps, hparams.val_interval, hparams.log_interval = 4, 1, 2, 2
    hparams.final_eval = False
    hparams.results_dir = str(tmp_path_factory.mktemp("mend-results"))
    dataset = importlib.import_module("easyeditor.dataset")
    with small_world.easyedit_patches(), baseline_fixes():  # MEND's trainer reads model_parallel
        # EasyEdit runs round(max_iters / len(train_set)) epochs: a train set of max_iters records gives one.
        train = dataset.VQADataset(str(small_world.split("vqa_train")), size=hparams.max_iters, config=hparams)
        val = dataset.VQADataset(str(small_world.split("vqa_eval")), size=1, config=hparams)
        trainer = importlib.import_module("easyeditor.trainer").MultimodalTrainer(hparams, train, val)
        trainer.run()
    return trainer, hparams


def test_editing_yaml_loads_with_easyedit_mend_hparams():
    mend_hparams = importlib.import_module("easyeditor.models.mend.mend_multimodal_hparams")
    hparams = mend_hparams.MENDMultimodalHparams.from_hparams(str(MEND_EDITING_YAML))
    assert hparams.alg_name == "MEND" and hparams.model_name == "blip2"
    assert hparams.inner_params[-1] == "opt_model.model.decoder.layers.3.fc2.weight"


def test_mend_trainer_saves_an_archive(trained):
    trainer, _ = trained
    archive = torch.load(trainer.save_path, map_location="cpu", weights_only=False)
    assert "model" in archive and any(k.startswith("mend.") for k in archive["model"])


def test_sequential_mend_edits(small_world, trained):
    trainer, hparams = trained
    mend = trainer.model
    mend.eval()  # the trained normaliser statistics in use (EasyEdit's executor would leave train mode on)
    base = mend.model
    inner = list(hparams.inner_params)
    original = {name: base.get_parameter(name).detach().clone() for name in inner}
    evaluate = importlib.import_module("easyeditor.evaluate.evaluate")
    dataset = importlib.import_module("easyeditor.dataset")
    with small_world.easyedit_patches():
        data = dataset.VQADataset(str(small_world.split("vqa_eval")), size=3, config=hparams)
        previous = {name: tensor.clone() for name, tensor in original.items()}
        for i in range(len(data)):
            batch = data.collate_fn([data[i]])
            edited, info = mend.edit(batch["edit_inner"], batch["cond"])
            new_weights = dict(edited.model.named_parameters())
            with torch.no_grad():  # apply in place, keep for the next edit: sequential editing
                for name in inner:
                    base.get_parameter(name).copy_(new_weights[name])
            for name in inner:
                weight = base.get_parameter(name)
                assert torch.isfinite(weight).all(), (i, name)
                assert not torch.equal(weight, previous[name]), f"edit {i} left {name} unchanged"
                previous[name] = weight.detach().clone()
            assert "grad/true_mag0" in info
            # EasyEdit's metric code scores the edited model on the edit's own target.
            tok, item = small_world.tokenizer(), data[i]
            request = evaluate.prepare_multimodal_edit(hparams, tok, item["target"], item["prompt"], item["image"])
            accuracy, _ = evaluate.compute_multimodal_edit_quality(base, request)
            assert 0.0 <= float(accuracy) <= 1.0
    drift = sum(float((base.get_parameter(n) - original[n]).norm()) for n in inner)
    assert drift > 0.0
