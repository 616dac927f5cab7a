"""The diagnosed sequential-editing loop shared by every editor: edit, measure, probe, classify, repeat.

Each edit is committed in place and never restored (that is sequential, lifelong editing). After each edit
the loop measures the edited weights, runs a fixed probe input under an ``ActivationWatch`` and records the
logits' range and the module with the least headroom left. The first edit after which anything is
non-finite ends the run with a ``Failure`` whose kind says *why* (see ``report.FAILURE_KINDS``); the
editor-specific ``suspect`` callback can name a cause the generic loop cannot see (MEND's normaliser
statistics).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .report import EditRecord, Failure, RunReport
from .watch import ActivationWatch, floating_tensors
from .weights import WeightTracker

LOG = logging.getLogger(__name__)


def logits_of(output: Any) -> Any:
    """The logits inside a model output (``.logits`` of a ``ModelOutput`` / EasyEdit ``BLIP2Output``), else it."""
    logits = getattr(output, "logits", None)
    return output if logits is None else logits


def _range(value: Any) -> tuple[float, float, bool]:
    """(min, max, finite) over the floating tensors of ``value``; NaN propagates into min/max."""
    lo, hi, finite = math.inf, -math.inf, True
    for t in floating_tensors(value):
        t = t.detach()
        finite &= bool(torch.isfinite(t).all())
        lo, hi = min(lo, float(t.min())), max(hi, float(t.max()))
        if torch.isnan(t).any():
            lo = hi = math.nan
    return lo, hi, finite


def run_sequence(
    editor: str,
    edits: Sequence[Any],
    apply_edit: Callable[[Any], float | None],
    probe: Callable[[], Any],
    watch_model: nn.Module,
    tracker: WeightTracker | None,
    settings: dict[str, Any],
    suspect: Callable[[], str] | None = None,
    stop_at_failure: bool = True,
    focus: str = "",
) -> RunReport:
    """Apply ``edits`` one after another without restoring, diagnosing the model after each.

    Args:
        editor: name shown in the report.
        edits: the edit sequence (whatever ``apply_edit`` takes).
        apply_edit: commits one edit in place; returns the editor's own loss on the edit sample (None if the
            editor computes none).
        probe: one forward pass on a fixed input; its logits (or whole output) must stay finite.
        watch_model: the module whose submodules are hooked during the probe.
        tracker: the edited weights to measure (None for editors that change no weight).
        settings: recorded as is in the report (hparams path, precision, modes...).
        suspect: called when something went non-finite; a non-empty answer is a cause that overrides the
            generic classification, as ``"nan_normaliser_statistics: <detail>"``.
        stop_at_failure: end the run at the first failing edit (what follows is NaN propagating).
        focus: name prefix of the modules whose headroom is reported (e.g. ``"opt_model"``: the language model
            the edits act on); "" considers every module.

    Returns:
        The ``RunReport``. Invariant: ``report.failure.edit`` is the first edit after which a tracked weight or
        the probe output held a non-finite value.
    """
    run = RunReport(editor=editor, settings=dict(settings))
    if tracker is not None:
        run.initial = tracker.measure()
    for index, edit in enumerate(edits):
        before = tracker.snapshot() if tracker is not None else None
        try:
            loss = apply_edit(edit)
        except Exception as error:  # the editor's own failure is a finding, not a crash of the diagnostic
            run.failure = Failure("edit_raised", index, "", "", detail=repr(error))
            LOG.warning("%s: edit %d raised %r", editor, index + 1, error)
            break
        weights = tracker.measure(before) if tracker is not None else []
        with torch.no_grad(), ActivationWatch(watch_model) as watch:
            output = probe()
        lo, hi, logits_finite = _range(logits_of(output))
        record = EditRecord(
            index=index,
            edit_loss=None if loss is None else float(loss),
            weights=weights,
            logits_min=lo,
            logits_max=hi,
            finite=logits_finite and all(w.finite for w in weights),
        )
        tight = watch.result.tightest(1, prefix=focus)
        if tight:
            record.tightest_module, record.tightest_headroom = tight[0].name, tight[0].headroom
            record.tightest_dtype = tight[0].dtype
        first = watch.result.first_nonfinite
        if first is not None:
            record.first_module, record.first_module_inputs_finite = first.name, first.inputs_finite
        run.edits.append(record)
        LOG.info("%s: edit %d loss %s logits [%.4g, %.4g]", editor, index + 1, loss, lo, hi)
        if record.finite:
            continue
        run.failure = _classify(record, suspect)
        if stop_at_failure:
            break
    return run


def _classify(record: EditRecord, suspect: Callable[[], str] | None) -> Failure:
    """Name the kind, module and tensor of the first failure (``record`` is the first non-finite edit)."""
    bad_weight = next((w for w in record.weights if not w.finite), None)
    if bad_weight is not None:
        failure = Failure(
            "weight_overflow",
            record.index,
            bad_weight.name.rsplit(".", 1)[0],
            f"weight {bad_weight.name}{bad_weight.first_nonfinite}",
        )
    else:
        origin = "it produced it" if record.first_module_inputs_finite else "its input was already non-finite"
        failure = Failure(
            "activation_overflow",
            record.index,
            record.first_module,
            f"output of {record.first_module or '<root>'}",
            detail=f"first non-finite module output ({origin})",
        )
    cause = suspect() if suspect is not None else ""
    if cause:
        kind, _, detail = cause.partition(": ")
        failure.kind, failure.detail = kind, detail
    return failure
