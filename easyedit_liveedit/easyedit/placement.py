"""One device and precision policy for every entry point: editor API, comparison, EMT probe, NaN guard and trainer.

Devices:

- **Samples go where the model takes its inputs** (``input_device``): the device of the model's first parameter,
  which for EasyEdit's backbones is the vision tower's and for a backbone sharded with ``device_map`` the first
  shard's (accelerate moves activations between shards itself). EasyEdit's datasets yield CPU tensors (or tensors on
  ``hparams.device``); every entry point passes them through ``to_device`` before calling the model.
- **LiveEdit's networks sit on the edit layer's device** (``liveedit.model``: the first parameter of decoder layer
  ``l_e``), so on a sharded backbone the experts meet the hidden states where they are; the expert library follows
  the networks (``liveedit.library``).
- **A model EasyEdit builds goes to the hparams' device** (``hparams_device``): ``device: 0`` means ``cuda:0``, as in
  EasyEdit, and the CPU on a machine without CUDA (as ``compat.cuda_to_cpu`` makes EasyEdit's own calls do).

Precision:

- routing keys and similarities are always fp32 (``liveedit.networks.fp32``, ``ExpertLibrary.route``);
- LiveEdit's networks keep fp32 weights; meta-training may compute in bf16 or fp16 under autocast (the training
  hparams key ``precision``), and the backbone keeps the dtype it was loaded in;
- whenever fp16 takes part in meta-training (``precision: fp16``, or a backbone whose decoder weights are fp16, as
  EasyEdit loads OPT and LLaMA) the loss is scaled (``torch.amp.GradScaler``), and a step whose gradients are not
  finite is skipped and counted, not fatal (``trainer.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(value: str, where: str = "<hparams>") -> str:
    """``value`` if it names a precision; ``ValueError`` naming the key ``precision`` and ``where`` otherwise."""
    if value not in PRECISIONS:
        raise ValueError(f"{where}: key 'precision' is {value!r}; expected one of {', '.join(PRECISIONS)}")
    return value


def hparams_device(hparams: Any) -> torch.device:
    """The device an EasyEdit hparams object asks for (``device: 0`` / ``"cuda:1"`` / ``"cpu"``).

    An integer is a CUDA index, as EasyEdit reads it. Without CUDA every CUDA device becomes the CPU, as
    ``compat.cuda_to_cpu`` does for EasyEdit's own calls.
    """
    value = getattr(hparams, "device", None)
    if value is None:
        device = torch.device("cpu")
    elif isinstance(value, int) and not isinstance(value, bool):
        device = torch.device("cuda", value)
    else:
        device = torch.device(value)
    if device.type == "cuda" and not torch.cuda.is_available():
        return torch.device("cpu")
    return device


def input_device(model: Any) -> torch.device:
    """Where ``model`` takes its inputs: the device of its first parameter (the CPU for a parameterless stand-in).

    For EasyEdit's ``Blip2OPT`` / ``MiniGPT4`` that is the vision tower (registered first; the text follows the image
    inside their forward); for a ``device_map`` model the first shard; for a ``LiveEdit`` editor its backbone's.
    """
    parameters = getattr(model, "parameters", None)
    parameter = next(parameters(), None) if callable(parameters) else None
    return parameter.device if parameter is not None else torch.device("cpu")


def to_device(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor in it (nested in dicts, lists and tuples) on ``device``; other values as they are.

    Mappings come back as plain dicts (a tokenizer's ``BatchEncoding`` included); tensors already there are not
    copied.
    """
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, Mapping):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and any(isinstance(v, (torch.Tensor, Mapping, list, tuple)) for v in value):
        return type(value)(to_device(v, device) for v in value)
    return value


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast for meta-training at ``precision`` on ``device``'s type; a null context for ``fp32``."""
    check_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=PRECISIONS[precision])


def computes_in_fp16(module: nn.Module) -> bool:
    """Whether any floating-point parameter of ``module`` is fp16 (EasyEdit loads OPT and LLaMA that way)."""
    return any(p.dtype == torch.float16 for p in module.parameters())


def needs_loss_scaling(precision: str, decoder: nn.Module) -> bool:
    """Loss scaling is on whenever fp16 computes in meta-training: autocast at fp16, or an fp16 decoder that the
    gradients flow back through (fp16 gradients of small losses underflow to zero without it)."""
    return check_precision(precision) == "fp16" or computes_in_fp16(decoder)


def grad_scaler(device: torch.device, enabled: bool, init_scale: float = 2.0**16) -> torch.amp.GradScaler:
    """``torch.amp.GradScaler`` for ``device``'s type (CUDA and CPU both support it); a no-op when not ``enabled``.

    It starts at ``init_scale`` (torch's default) and halves after every step whose scaled gradients overflow, which
    the trainer skips and counts, so the first steps of an fp16 run are usually skipped while the scale settles.
    """
    return torch.amp.GradScaler(device.type, init_scale=init_scale, enabled=enabled)
