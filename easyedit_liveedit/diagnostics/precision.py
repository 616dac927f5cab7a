"""Running EasyEdit's BLIP-2 on the CPU with the numerics it has on a GPU.

EasyEdit's ``Blip2OPT`` loads OPT with ``torch_dtype=torch.float16`` and wraps the vision encoder and the OPT
forward in ``maybe_autocast()``, which on CUDA is fp16 autocast and on the CPU a null context. Under CUDA
autocast:

- every ``Linear`` (attention projections, ``fc1``, ``fc2``, ``lm_head``) computes in fp16, so its output
  overflows to ``inf`` past 65504;
- ``LayerNorm`` is on CUDA autocast's fp32 list: its input and weights are cast to fp32;
- the residual stream is fp32 for image inputs (the Q-Former tokens come out of the fp32 ``opt_proj`` and
  promote the concatenation), fp16 for text-only inputs.

CPU autocast has no fp32 rule for ``LayerNorm`` (fp32 input with fp16 weights is an error there), so
``easyedit_fp16`` keeps OPT's LayerNorm weights in fp32 after rounding them to fp16, which gives CUDA's cast
exactly, and ``gpu_like_autocast`` makes ``maybe_autocast`` return CPU fp16 autocast. Together they reproduce
the GPU precision of every OPT module output, which is what decides whether an edited model overflows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ..easyedit.placement import input_device

PRECISIONS = ("fp16", "fp32")


def easyedit_fp16(model: nn.Module) -> nn.Module:
    """Put a ``Blip2OPT``'s OPT back in fp16 as EasyEdit loads it, LayerNorms rounded to fp16 but kept in fp32.

    Models without ``opt_model`` are cast to fp16 whole (LayerNorms likewise kept in fp32). Returns ``model``.
    """
    language_model = getattr(model, "opt_model", model)
    language_model.half()
    for module in language_model.modules():
        if isinstance(module, nn.LayerNorm):
            module.float()  # values already rounded to fp16 by half(): what CUDA autocast's fp32 cast sees
    return model


def set_precision(model: nn.Module, precision: str) -> nn.Module:
    """``"fp16"``: ``easyedit_fp16``; ``"fp32"``: the whole model in fp32. Returns ``model``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return easyedit_fp16(model) if precision == "fp16" else model.float()


def autocast_dtype(precision: str) -> torch.dtype:
    return torch.float16 if precision == "fp16" else torch.float32


@contextlib.contextmanager
def gpu_like_autocast(model: nn.Module, precision: str) -> Iterator[None]:
    """Make ``Blip2OPT.maybe_autocast`` autocast on the CPU as it does on CUDA (fp16), for the block.

    The method is overridden on this one instance only and restored on exit. Models without
    ``maybe_autocast`` run in their own dtype (nothing else in the block, e.g. MEND's networks, is autocast);
    ``"fp32"`` changes nothing, and neither does a model on CUDA (its own ``maybe_autocast`` is CUDA's fp16).
    """
    if precision == "fp32" or not hasattr(model, "maybe_autocast") or input_device(model).type != "cpu":
        yield  # on CUDA, EasyEdit's own maybe_autocast is already fp16 autocast
        return
    dtype = autocast_dtype(precision)
    model.maybe_autocast = lambda *args, **kwargs: torch.autocast("cpu", dtype=dtype)
    # nn.TransformerEncoderLayer (the toy's vision tower) takes its fused fast path unless it sees autocast, and
    # it looks for CUDA autocast only: under CPU autocast the fused kernel would run the whole tower in fp16 and
    # hand the Q-Former fp16 features, which no GPU run does. The layer-by-layer path autocasts op by op.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        del model.maybe_autocast
