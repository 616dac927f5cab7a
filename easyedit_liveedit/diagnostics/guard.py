"""Guard mode: run a sequence of edits so that an edit which breaks the model is rolled back, not kept.

Sequential (lifelong) editing commits every edit in place. One edit that drives the model to ``inf``/``NaN``
ruins every later answer, and for a weight editor the damage is permanent: a NaN in a weight never leaves.
``run_guarded`` applies the edits one at a time; after each it checks the model on a fixed probe input (and,
for weight editors, the weights the edit wrote). A failing edit is undone, reported with the module where
the forward pass first went non-finite, and the run continues with the next edit. Edits already committed are
never touched: the rollback restores exactly what the failing edit changed.

Rollback depends on how the editor stores an edit:

- ``WeightRollback``: methods that write into weights (MEND, ROME, FT, ...). The checkpoint is a clone of
  the tracked weights; rollback copies back, bit for bit, the ones the edit changed.
- ``ExpertRollback``: LiveEdit, whose edits are experts in ``editor.library``; rollback removes the experts
  the edit added. The backbone's weights never change.

``rollback_for`` picks one for a given editor or model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch
from torch import nn

from .watch import ActivationWatch, all_finite, max_abs
from .weights import WeightTracker, first_nonfinite_index

LOG = logging.getLogger(__name__)

Edit = TypeVar("Edit")


class Rollback(Protocol):
    """How to undo one edit of a given editor."""

    def checkpoint(self) -> Any:
        """State before an edit (whatever ``undo`` needs)."""

    def changes(self, state: Any) -> list[str]:
        """What the edit since ``state`` changed: weight names, or expert ids as strings."""

    def problems(self, state: Any) -> list[str]:
        """Non-finite values the edit wrote into its own state (e.g. a weight), as readable strings."""

    def undo(self, state: Any) -> None:
        """Return the editor to ``state``, touching only what the edit changed."""


class WeightRollback:
    """Rollback for weight editors: restore the tracked weights the edit changed."""

    def __init__(self, model: nn.Module, names: Iterable[str] | None = None) -> None:
        """
        Args:
            model: the model the editor writes into.
            names: the weights the editor may write (e.g. MEND's ``inner_params``); None tracks all.
        """
        self.tracker = WeightTracker(model, names)

    def checkpoint(self) -> dict[str, torch.Tensor]:
        return self.tracker.snapshot()

    def changes(self, state: dict[str, torch.Tensor]) -> list[str]:
        return self.tracker.changed(state)

    def problems(self, state: dict[str, torch.Tensor]) -> list[str]:
        out = []
        for name in self.tracker.changed(state):
            index = first_nonfinite_index(self.tracker.current(name))
            if index is not None:
                out.append(f"{name}{index}")
        return out

    def undo(self, state: dict[str, torch.Tensor]) -> None:
        self.tracker.restore(state, self.tracker.changed(state))


class ExpertRollback:
    """Rollback for LiveEdit: remove the experts the edit added to ``editor.library``."""

    def __init__(self, editor: Any) -> None:
        self.editor = editor

    def checkpoint(self) -> set[int]:
        return set(self.editor.library.ids())

    def _added(self, state: set[int]) -> list[int]:
        return [i for i in self.editor.library.ids() if i not in state]

    def changes(self, state: set[int]) -> list[str]:
        return [f"expert {i}" for i in self._added(state)]

    def problems(self, state: set[int]) -> list[str]:
        return []  # an expert's own values only matter through the forward pass, which the probe checks

    def undo(self, state: set[int]) -> None:
        for expert_id in self._added(state):
            self.editor.remove(expert_id)


def rollback_for(editor_or_model: Any, weight_names: Iterable[str] | None = None) -> Rollback:
    """The rollback that fits ``editor_or_model``: experts for a LiveEdit-style library, else weights.

    Args:
        editor_or_model: a LiveEdit editor (has ``library.ids()`` and ``remove``) or an ``nn.Module``.
        weight_names: for weight editors, the weights the method writes (None: all parameters).
    """
    library = getattr(editor_or_model, "library", None)
    if library is not None and hasattr(library, "ids") and hasattr(editor_or_model, "remove"):
        return ExpertRollback(editor_or_model)
    if isinstance(editor_or_model, nn.Module):
        return WeightRollback(editor_or_model, weight_names)
    raise TypeError(f"rollback_for: no rollback for {type(editor_or_model).__name__}")


@dataclass
class GuardedEdit:
    """The fate of one edit under the guard."""

    index: int  # position in the edit sequence
    committed: bool
    changes: list[str]  # weights written / experts added by the edit
    probe_max_abs: float  # largest |probe output| after the edit (nan/inf when it failed)
    reason: str = ""  # why it was rolled back ("" when committed)
    first_module: str = ""  # first module whose output went non-finite on the probe
    first_module_inputs_finite: bool | None = None
    error: str = ""  # the exception, when the edit itself raised


@dataclass
class GuardReport:
    """All edits of a guarded run, in order."""

    edits: list[GuardedEdit] = field(default_factory=list)

    @property
    def committed(self) -> list[int]:
        return [e.index for e in self.edits if e.committed]

    @property
    def rolled_back(self) -> list[int]:
        return [e.index for e in self.edits if not e.committed]


def run_guarded(
    edits: Sequence[Edit],
    apply_edit: Callable[[Edit], Any],
    probe: Callable[[], Any],
    rollback: Rollback,
    watch_model: nn.Module | None = None,
) -> GuardReport:
    """Apply ``edits`` in order; roll back and report each one after which the probe is not finite.

    Args:
        edits: the edit sequence (any objects ``apply_edit`` understands).
        apply_edit: commits one edit in place (its return value is ignored).
        probe: runs the edited model on a fixed input and returns its output (tensor, tuple, dict,
            ``ModelOutput``...); all its floating tensors must be finite for the edit to stand.
        rollback: how to undo an edit (``rollback_for``).
        watch_model: the module to hook when a probe fails, to name the first non-finite module
            (None: do not localise).

    Returns:
        A ``GuardReport``. Invariants: after the call, the model holds exactly the committed edits (a
        rolled-back edit leaves no trace); an edit that raises is rolled back like a failing one.
    """
    report = GuardReport()
    for index, edit in enumerate(edits):
        state = rollback.checkpoint()
        try:
            apply_edit(edit)
        except Exception as error:  # any failure of one edit must not end the run
            rollback.undo(state)
            report.edits.append(GuardedEdit(index, False, [], math.nan, "the edit raised", error=repr(error)))
            LOG.warning("edit %d raised %r; rolled back", index, error)
            continue
        changes = rollback.changes(state)
        written = rollback.problems(state)
        with torch.no_grad():
            output = probe()
        largest = max_abs(output)
        if not written and all_finite(output):
            report.edits.append(GuardedEdit(index, True, changes, largest))
            continue
        outcome = GuardedEdit(index, False, changes, largest)
        outcome.reason = f"non-finite weight {written[0]}" if written else "non-finite probe output"
        if watch_model is not None:
            with torch.no_grad(), ActivationWatch(watch_model) as watch:
                probe()
            first = watch.result.first_nonfinite
            if first is not None:
                outcome.first_module, outcome.first_module_inputs_finite = first.name, first.inputs_finite
        rollback.undo(state)
        report.edits.append(outcome)
        LOG.warning("edit %d rolled back: %s %s", index, outcome.reason, outcome.first_module)
    return report
