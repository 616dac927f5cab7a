"""One device and precision policy (``easyedit/placement.py``) and the trainer's mixed precision on the CPU.

A CPU has one real device; a second one is stood in for by torch's ``meta`` device (tensors without storage), which
is enough to see where a tensor or a network is *put*. bf16 and fp16 autocast run on the CPU, as does
``torch.amp.GradScaler``.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from helpers import small_liveedit_hparams
from torch import nn

from easyedit_liveedit import LiveEdit, LiveEditMultimodalTrainer
from easyedit_liveedit.bench.emt_probe import classification_accuracy
from easyedit_liveedit.bench.engine import _FiniteWatch
from easyedit_liveedit.easyedit import placement, scoring

META = torch.device("meta")


# ------------------------------------------------------------------------------------------------------ devices
def test_to_device_moves_every_tensor_in_a_nested_batch_and_keeps_the_rest():
    from transformers import BatchEncoding

    batch = {
        "edit_inner": {"image": torch.ones(2, 3), "text_input": ["a", "b"], "prompts_len": [1, 2]},
        "cond": BatchEncoding({"input_ids": torch.ones(2, 4, dtype=torch.long)}),
        "pair": (torch.zeros(1), "x"),
    }
    moved = placement.to_device(batch, META)
    assert moved["edit_inner"]["image"].device == META
    assert moved["edit_inner"]["text_input"] == ["a", "b"] and moved["edit_inner"]["prompts_len"] == [1, 2]
    assert moved["cond"]["input_ids"].device == META
    assert moved["pair"][0].device == META and moved["pair"][1] == "x"
    here = torch.ones(2)
    assert placement.to_device(here, torch.device("cpu")) is here  # no copy when already there


def test_hparams_device_reads_easyedits_integer_as_cuda(monkeypatch):
    class H:
        device = 1

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert placement.hparams_device(H()) == torch.device("cuda", 1)
    H.device = "cpu"
    assert placement.hparams_device(H()) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    H.device = 0
    assert placement.hparams_device(H()) == torch.device("cpu")  # as compat.cuda_to_cpu keeps EasyEdit's calls


def test_input_device_is_the_first_parameters_also_through_the_comparisons_watch():
    model = nn.Sequential(nn.Linear(2, 2, device=META), nn.Linear(2, 2))
    assert placement.input_device(model) == META
    assert placement.input_device(_FiniteWatch(model)) == META  # scoring and the EMT probe see the watched model
    assert placement.input_device(lambda samples: None) == torch.device("cpu")


class Recorder(nn.Module):
    """A stand-in backbone on another device: records where its inputs arrive, answers with CPU logits."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, device=META))
        self.vocab = vocab
        self.seen: list[torch.device] = []

    def forward(self, samples: dict) -> torch.Tensor:
        self.seen.append(samples["image"].device if samples["image"] is not None else None)
        return torch.zeros(len(samples["text_input"]), 40, self.vocab)


def test_scoring_and_the_emt_probe_move_images_to_the_models_device(small_world):
    tok = small_world.tokenizer()
    model = Recorder(len(tok))
    request = {"prompt": "what digit is this?", "target": "seven", "image": torch.zeros(3, 16, 16)}
    hparams = small_liveedit_hparams(small_world)
    scoring.score(model, hparams, tok, request)
    records = [{"image": "x.png", "prompt": "which digit?", "answer": "seven", "classes": ["seven"]}]
    classification_accuracy(_FiniteWatch(model), tok, records, lambda path: torch.zeros(3, 16, 16))
    assert model.seen and all(device == META for device in model.seen)


def test_liveedit_networks_sit_on_the_edit_layers_device(small_world):
    """A backbone sharded over devices (``device_map``): the networks go where layer l_e is, not the first shard."""
    model = small_world.load_model()
    layers = model.opt_model.model.decoder.layers
    layers[1].to(META)  # the edit layer (edit_layer=1) on "another device"; the rest stays on the CPU
    editor = LiveEdit(model, small_liveedit_hparams(small_world))
    assert {p.device for p in editor.net.parameters()} == {META}
    assert placement.input_device(editor) == torch.device("cpu")  # inputs still go to the first shard


# ------------------------------------------------------------------------------------------------- precision
def test_precision_key_is_checked_naming_the_key(small_world):
    with pytest.raises(ValueError, match="key 'precision' is 'fp8'"):
        small_liveedit_hparams(small_world, training=True, precision="fp8")


def test_loss_scaling_is_on_whenever_fp16_computes():
    fp16 = nn.Linear(2, 2).half()
    fp32 = nn.Linear(2, 2)
    assert placement.needs_loss_scaling("fp16", fp32)
    assert placement.needs_loss_scaling("fp32", fp16)  # EasyEdit loads OPT/LLaMA in fp16
    assert not placement.needs_loss_scaling("bf16", fp32)
    assert not placement.needs_loss_scaling("fp32", fp32)


def make_trainer(world, tmp_path, precision: str) -> tuple[LiveEditMultimodalTrainer, dict]:
    from easyeditor import VQADataset

    hparams = small_liveedit_hparams(
        world, training=True, batch_size=4, val_batch_size=4, max_iters=8, results_dir=str(tmp_path),
        precision=precision, filter_lambda=1.0,
    )  # fmt: skip
    with world.easyedit_patches():
        train = VQADataset(str(world.split("vqa_train")), size=8, config=hparams)
        trainer = LiveEditMultimodalTrainer(hparams, train, train)
        batch = next(iter(trainer.train_loader))
    trainer.global_iter = 1
    return trainer, batch


def networks(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.net.state_dict().items()}


def changed(before: dict, after: dict) -> bool:
    return any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_meta_training_autocasts_the_backbone_and_keeps_liveedit_in_fp32(small_world, tmp_path, precision, dtype):
    trainer, batch = make_trainer(small_world, tmp_path, precision)
    seen = []
    fc1 = trainer.model.model.opt_model.model.decoder.layers[0].fc1
    handle = fc1.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    before = networks(trainer)
    try:
        # fp16: GradScaler starts at 2**16 and halves after each step whose scaled gradients overflow (skipped)
        for _ in range(20):
            info = trainer.train_step(batch)
            if "grad" in info:
                break
    finally:
        handle.remove()
    assert seen and set(seen) == {dtype}
    assert math.isfinite(info["loss/total_edit"]) and math.isfinite(info["grad"])
    assert changed(before, networks(trainer))
    assert {p.dtype for p in trainer.model.net.parameters()} == {torch.float32}
    assert trainer.scaler.is_enabled() == (precision == "fp16")
    if precision == "fp16":
        assert info["loss_scale"] == 2.0**16 / 2 ** info["skipped_steps"]
    else:
        assert info["skipped_steps"] == 0 and "loss_scale" not in info


def poison_next_gradient(trainer) -> None:
    """Make the next backward write an infinite gradient into one LiveEdit parameter (once)."""
    parameter = trainer.model.net.sentinel
    handles = []

    def to_inf(grad: torch.Tensor) -> torch.Tensor:
        handles.pop().remove()
        return torch.full_like(grad, math.inf)

    handles.append(parameter.register_hook(to_inf))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_non_finite_step_is_skipped_and_counted_not_fatal(small_world, tmp_path, precision):
    trainer, batch = make_trainer(small_world, tmp_path, precision)
    if trainer.scaler.is_enabled():
        trainer.scaler = placement.grad_scaler(trainer.device, True, init_scale=1.0)  # no overflow of its own
    before = networks(trainer)
    poison_next_gradient(trainer)
    info = trainer.train_step(batch)
    assert info["skipped_steps"] == 1 and "grad" not in info
    assert not changed(before, networks(trainer))  # the step was not taken
    assert not trainer.opt.state  # Adam never stepped
    if precision == "fp16":
        assert info["loss_scale"] == 0.5  # the scaler backs off
    info = trainer.train_step(batch)  # training goes on
    assert info["skipped_steps"] == 1 and math.isfinite(info["grad"])
    assert changed(before, networks(trainer))


def test_easyedits_own_train_step_aborts_on_a_non_finite_gradient(small_world, tmp_path):
    """Why the trainer overrides ``train_step``: EasyEdit's clips with ``error_if_nonfinite=True``."""
    trainer, batch = make_trainer(small_world, tmp_path, "fp32")
    stock = importlib.import_module("easyeditor.trainer.MultimodalTrainer").MultimodalTrainer.train_step
    poison_next_gradient(trainer)
    with pytest.raises(RuntimeError, match="non-finite"):
        stock(trainer, batch)
