"""EasyEdit on a machine without CUDA: ``cuda_to_cpu()`` keeps the CUDA devices EasyEdit hard-codes on the CPU.

Used around every call into EasyEdit's editors, trainers and evaluation (by the editor API, the trainer, the
harness and the toy world); it does nothing where CUDA exists.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch


# --- `cuda:{device}` and `device: 0` hard-coded across EasyEdit -----------------------------------------------
# `MultimodalEditor.__init__/edit`, the MEND/SERAC executors, `MEND.__init__`, `SERAC.__init__`, IKE and the
# evaluate helpers build `f"cuda:{hparams.device}"` whatever the hparams say; EasyEdit's YAMLs say `device: 0`,
# which reaches `tensor.to(0)` (`VQADataset.collate_fn`'s `dict_to`) and `module.to(0)` (`BaseTrainer`); the
# MEND/SERAC trainers call `.cuda()`. On a machine without CUDA these fail. In the wheel's multimodal paths the
# CUDA device only ever reaches torch through `Tensor.to`, `Module.to` and `.cuda()` (tensor factories take their
# device from a tensor), so while active, this context makes exactly those three keep everything on the CPU:
# any CUDA device (string, torch.device, or an integer index) becomes "cpu". It is a no-op when CUDA exists.
# Why not a TorchFunctionMode, which would also catch factories: every torch call then detours through Python,
# which doubled the time of SERAC's meta-training on the toy backbone (BENCHMARKS.md) and slowed editing alike.
def _is_cuda(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return isinstance(device, str) and device.startswith("cuda")


def _is_cuda_or_index(device: Any) -> bool:
    return _is_cuda(device) or (isinstance(device, int) and not isinstance(device, bool))


def _kept_on_cpu(to: Callable) -> Callable:
    """``to`` (``Tensor.to`` or ``Module.to``) with every CUDA device among its arguments replaced by the CPU."""

    @functools.wraps(to)
    def cpu_to(self: Any, *args: Any, **kwargs: Any) -> Any:
        args = tuple("cpu" if _is_cuda_or_index(a) else a for a in args)
        if _is_cuda_or_index(kwargs.get("device")):
            kwargs["device"] = "cpu"
        return to(self, *args, **kwargs)

    return cpu_to


def _stays_on_cpu(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return self  # tensor.cuda(device=None, non_blocking=False); Module.cuda() reaches it through _apply


def _patched() -> bool:
    return torch.Tensor.__dict__.get("cuda") is _stays_on_cpu


@contextlib.contextmanager
def cuda_to_cpu() -> Iterator[None]:
    """Run EasyEdit code that hard-codes ``cuda:{device}`` or ``device: 0`` on the CPU when CUDA is unavailable.

    Nested uses are free: only the outermost one patches torch and restores its own methods on exit.
    """
    if torch.cuda.is_available() or _patched():
        yield
        return
    replacements = {
        (torch.Tensor, "to"): _kept_on_cpu(torch.Tensor.to),
        (torch.Tensor, "cuda"): _stays_on_cpu,
        (torch.nn.Module, "to"): _kept_on_cpu(torch.nn.Module.to),
    }
    originals = {key: key[0].__dict__.get(key[1]) for key in replacements}  # None: inherited from torch._C
    for (cls, name), replacement in replacements.items():
        setattr(cls, name, replacement)
    try:
        yield
    finally:
        for (cls, name), original in originals.items():
            if original is None:
                delattr(cls, name)
            else:
                setattr(cls, name, original)
