"""Edited-weight bookkeeping: per weight and per edit, its size, its update, and its first non-finite element.

A weight-editing method (MEND, ROME, fine-tuning) writes into a handful of matrices. Watching them edit after
edit shows the mechanism of a sequential-editing collapse before any output goes non-finite: norms that grow
geometrically, updates as large as the weight itself, and finally the first ``inf``/``NaN`` written into a
matrix (which never leaves: every later forward through it is non-finite).

Norms are computed in float64 so that an fp16 weight whose Frobenius norm exceeds 65504 is still measured
(``torch.linalg.norm`` of an fp16 tensor overflows to ``inf`` itself).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class WeightStat:
    """One weight after one edit."""

    name: str
    dtype: str
    norm: float  # Frobenius norm (nan/inf once the weight holds non-finite values)
    max_abs: float
    finite: bool
    first_nonfinite: list[int] | None  # index of the first non-finite element (row-major), None if finite
    update_norm: float  # ||W_after - W_before|| (0 when the edit did not touch it)
    relative_update: float  # update_norm / ||W_before|| (inf if the weight was zero)


def first_nonfinite_index(t: Tensor) -> list[int] | None:
    """Index (one int per dimension) of the first non-finite element of ``t`` in row-major order, or None."""
    bad = ~torch.isfinite(t)
    if not bool(bad.any()):
        return None
    return [int(i) for i in bad.nonzero()[0]]


def _norm(t: Tensor) -> float:
    return float(torch.linalg.vector_norm(t.detach().to(torch.float64)))


def weight_stat(name: str, after: Tensor, before: Tensor | None = None) -> WeightStat:
    """Measure ``after`` (and its change from ``before``, if given).

    Args:
        name: the parameter's qualified name (reported as is).
        after: the weight now.
        before: the same weight before the edit (same shape), or None for a first measurement.
    """
    after = after.detach()
    index = first_nonfinite_index(after)
    if before is None:
        update, relative = 0.0, 0.0
    else:
        diff = after.to(torch.float64) - before.detach().to(torch.float64)
        update = float(torch.linalg.vector_norm(diff))
        base = _norm(before)
        relative = update / base if base > 0 else (0.0 if update == 0 else math.inf)
    return WeightStat(
        name=name,
        dtype=str(after.dtype).replace("torch.", ""),
        norm=_norm(after),
        max_abs=float(after.abs().max()) if after.numel() else 0.0,
        finite=index is None,
        first_nonfinite=index,
        update_norm=update,
        relative_update=relative,
    )


class WeightTracker:
    """Snapshots and measures a fixed set of a model's parameters, edit after edit.

    Usage: ``before = tracker.snapshot()``; edit; ``stats = tracker.measure(before)``. The snapshot is a
    detached clone, so it doubles as the rollback point for a guard (``tracker.restore(before)``).
    """

    def __init__(self, model: nn.Module, names: Iterable[str] | None = None) -> None:
        """
        Args:
            model: the edited model.
            names: parameter names to track; None tracks every parameter (fine for small models; pass the
                method's edited weights, e.g. MEND's ``inner_params``, for large ones).
        """
        params = dict(model.named_parameters())
        if names is None:
            self.names = list(params)
        else:
            self.names = list(names)
            missing = [n for n in self.names if n not in params]
            if missing:
                raise KeyError(f"WeightTracker: the model has no parameters named {missing}")
        self._params = {n: params[n] for n in self.names}

    def current(self, name: str) -> Tensor:
        """The live tensor of parameter ``name``."""
        return self._params[name]

    @torch.no_grad()
    def snapshot(self) -> dict[str, Tensor]:
        """Detached clones of the tracked weights (bit-exact copies, same dtype and device)."""
        return {n: p.detach().clone() for n, p in self._params.items()}

    @torch.no_grad()
    def changed(self, before: dict[str, Tensor]) -> list[str]:
        """Names of the tracked weights that differ, bit for bit, from ``before`` (NaN counts as changed)."""
        out = []
        for n, p in self._params.items():
            old = before[n]
            same = torch.equal(p, old) or bool(((p == old) | (torch.isnan(p) & torch.isnan(old))).all())
            if not same:
                out.append(n)
        return out

    @torch.no_grad()
    def restore(self, before: dict[str, Tensor], names: Iterable[str] | None = None) -> None:
        """Copy ``before`` back into the live weights (all tracked ones, or only ``names``), bit for bit."""
        for n in self.names if names is None else names:
            self._params[n].copy_(before[n])

    @torch.no_grad()
    def measure(self, before: dict[str, Tensor] | None = None) -> list[WeightStat]:
        """One ``WeightStat`` per tracked weight, with updates relative to ``before`` when given."""
        return [weight_stat(n, p, None if before is None else before[n]) for n, p in self._params.items()]
