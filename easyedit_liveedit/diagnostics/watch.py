"""Activation watch: forward hooks on every module, to find where a forward pass first goes non-finite.

A forward hook fires when its module *finishes*, so children report before their parents, and the first
hook that sees a non-finite output belongs to the innermost module where the non-finite value appeared (or
the first hooked module downstream of un-hooked code, e.g. a residual ``x + y`` written inline). Each
record also says whether that module's *inputs* were finite: if they were, the module itself produced the
first non-finite value; if not, the value came from code between modules.

Besides finiteness, every module's largest ``|output|`` is kept with its *headroom*: how many times larger
the output could grow before it exceeds the largest finite value of its dtype (65504 for fp16). An fp16
model with a headroom of 2 somewhere is one edit away from ``inf``, although every output is still finite.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn


def floating_tensors(value: Any) -> Iterator[Tensor]:
    """Every floating-point tensor inside ``value`` (tensors, tuples, lists, dicts, ``ModelOutput``s)."""
    if isinstance(value, Tensor):
        if value.is_floating_point() and value.numel() > 0:
            yield value
    elif isinstance(value, dict):  # includes transformers' ModelOutput
        for item in value.values():
            yield from floating_tensors(item)
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from floating_tensors(item)
    elif hasattr(value, "__dataclass_fields__"):  # e.g. EasyEdit's BLIP2Output
        for name in value.__dataclass_fields__:
            yield from floating_tensors(getattr(value, name))


def all_finite(value: Any) -> bool:
    """True when every floating-point tensor inside ``value`` is finite (no NaN, no +-inf)."""
    return all(bool(torch.isfinite(t).all()) for t in floating_tensors(value))


def max_abs(value: Any) -> float:
    """Largest ``|x|`` over the floating-point tensors in ``value`` (``nan`` if any element is NaN)."""
    best = 0.0
    for t in floating_tensors(value):
        m = float(t.detach().abs().max())
        if math.isnan(m):
            return math.nan
        best = max(best, m)
    return best


def headroom(largest: float, dtype: torch.dtype) -> float:
    """``finfo(dtype).max / largest``: the factor by which ``largest`` can still grow before overflowing."""
    if math.isnan(largest) or math.isinf(largest):
        return 0.0
    if largest == 0.0:
        return math.inf
    return torch.finfo(dtype).max / largest


@dataclass
class ModuleRecord:
    """One module's outputs during a watched forward pass (all its calls merged)."""

    name: str  # qualified name in the watched model ("" is the root)
    kind: str  # class name
    order: int  # position of its first completed call, in execution (completion) order
    dtype: str  # dtype of its largest floating output
    calls: int = 0
    max_abs: float = 0.0  # over all calls and all floating outputs; inf / nan once non-finite
    headroom: float = math.inf  # finfo(dtype).max / max_abs
    finite: bool = True
    first_nonfinite_call: int | None = None  # global completion index of the first non-finite call
    inputs_finite: bool | None = None  # at that call: were the module's inputs finite? (True = it originated)


@dataclass
class WatchResult:
    """What one watched forward pass saw, module by module."""

    records: list[ModuleRecord] = field(default_factory=list)  # execution order of first completion

    @property
    def first_nonfinite(self) -> ModuleRecord | None:
        """The module whose output went non-finite first, in execution order; None if everything stayed finite."""
        bad = [r for r in self.records if not r.finite]
        return min(bad, key=lambda r: r.first_nonfinite_call) if bad else None

    def tightest(self, k: int = 3, prefix: str = "") -> list[ModuleRecord]:
        """The ``k`` finite modules named ``prefix...`` closest to overflowing their dtype (least headroom first)."""
        finite = [r for r in self.records if r.finite and r.max_abs > 0 and r.name.startswith(prefix)]
        return sorted(finite, key=lambda r: r.headroom)[:k]

    def record(self, name: str) -> ModuleRecord:
        """The record of module ``name`` (KeyError if it never ran)."""
        for r in self.records:
            if r.name == name:
                return r
        raise KeyError(f"module {name!r} did not run during the watched forward pass")


class ActivationWatch:
    """Context manager: hooks every submodule of ``model`` and fills a ``WatchResult`` while active.

    Invariants: the hooks only read tensors (outputs are returned unchanged) and are all removed on exit,
    even when the forward pass raises. A fresh ``WatchResult`` is started at each ``__enter__``.

    Example::

        with ActivationWatch(model) as watch:
            model(batch)
        print(watch.result.first_nonfinite)
    """

    def __init__(self, model: nn.Module, skip: tuple[type[nn.Module], ...] = ()) -> None:
        """
        Args:
            model: the module to watch (all of ``model.named_modules()``, the root included).
            skip: module classes not to hook (e.g. containers that only forward their children).
        """
        self.model = model
        self.skip = skip
        self.result = WatchResult()
        self._handles: list[Any] = []
        self._by_name: dict[str, ModuleRecord] = {}
        self._calls = 0

    def __enter__(self) -> ActivationWatch:
        self.result = WatchResult()
        self._by_name, self._calls = {}, 0
        for name, module in self.model.named_modules():
            if isinstance(module, self.skip):
                continue
            self._handles.append(module.register_forward_hook(self._hook_for(name), with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook_for(self, name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            self._observe(name, module, args, kwargs, output)

        return hook

    @torch.no_grad()
    def _observe(self, name: str, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        tensors = list(floating_tensors(output))
        if not tensors:
            return  # e.g. an embedding lookup's index bookkeeping, or a module returning only ints
        call = self._calls
        self._calls += 1
        record = self._by_name.get(name)
        if record is None:
            record = ModuleRecord(name=name, kind=type(module).__name__, order=len(self.result.records), dtype="")
            self._by_name[name] = record
            self.result.records.append(record)
        record.calls += 1
        for t in tensors:
            m = float(t.detach().abs().max())  # nan if t holds a NaN, inf if it holds an inf
            if math.isnan(m) or m > record.max_abs:  # once nan, max_abs stays nan (nan > x is False)
                record.max_abs, record.dtype = m, str(t.dtype).replace("torch.", "")
                record.headroom = headroom(m, t.dtype)
            if record.finite and not bool(torch.isfinite(t).all()):
                record.finite = False
                record.first_nonfinite_call = call
                record.inputs_finite = all_finite(args) and all_finite(kwargs)
