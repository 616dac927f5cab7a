"""The same diagnosed edit sequence run through LiveEdit, for comparison with MEND.

LiveEdit never writes into the backbone: each edit adds one low-rank expert to ``editor.library``. The run
tracks the same weights MEND edits (their norms stay flat, bit for bit) and checks the routed forward pass on
the same probe input after every edit, at the same precision.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..easyedit.archive import load_archive
from ..easyedit.editable import LiveEdit
from .precision import gpu_like_autocast, set_precision
from .report import RunReport
from .sequence import run_sequence
from .weights import WeightTracker

LOG = logging.getLogger(__name__)


def build_liveedit(model: nn.Module, hparams: Any) -> tuple[LiveEdit, str]:
    """A ``LiveEdit`` editor around ``model``, its networks loaded from ``hparams.archive`` when it exists.

    Returns:
        The editor (eval mode) and a note saying which networks it uses: meta-trained from the archive, or
        freshly initialised when the archive is missing (routing is then untrained, but the run still shows
        whether LiveEdit's edits can make the model non-finite).
    """
    editor = LiveEdit(model, hparams)
    archive = getattr(hparams, "archive", None)
    if archive and Path(archive).is_file():
        load_archive(editor, archive, getattr(hparams, "source", None) or "the hparams")
        note = f"networks meta-trained ({archive})"
    else:
        note = "networks freshly initialised (no LiveEdit archive found)"
    editor.eval()
    return editor, note


def run_liveedit(
    model: nn.Module,
    hparams: Any,
    edit_batches: Sequence[dict[str, Any]],
    probe_batch: dict[str, Any],
    tracked_weights: Sequence[str] = (),
    precision: str = "fp16",
    settings: dict[str, Any] | None = None,
) -> tuple[RunReport, LiveEdit]:
    """Edit with LiveEdit, one batch after another (experts accumulate), and diagnose every edit.

    Args:
        model: EasyEdit's backbone (unchanged by the run; LiveEdit's hooks are detached at the end).
        hparams: ``LiveEditMultimodalHparams``.
        edit_batches: one EasyEdit ``edit_inner`` batch per edit (the MEND run's sequence).
        probe_batch: the fixed batch checked after each edit.
        tracked_weights: backbone weights to measure each edit (e.g. MEND's ``inner_params``).
        precision: ``"fp16"`` (EasyEdit's GPU numerics, see ``mend_run``) or ``"fp32"``.
        settings: extra entries for the report's settings.

    Returns:
        The ``RunReport`` ("LiveEdit") and the editor (its library holds the committed edits).
    """
    set_precision(model, precision)
    editor, note = build_liveedit(model, hparams)

    def apply_edit(batch: dict[str, Any]) -> None:
        with torch.no_grad(), gpu_like_autocast(model, precision):
            editor.add_edits(batch)  # an edit is one forward pass; LiveEdit computes no loss

    def probe() -> Any:
        with gpu_like_autocast(model, precision):
            return editor(probe_batch)

    tracker = WeightTracker(model, tracked_weights) if tracked_weights else None
    recorded = {
        "editor": "LiveEdit (easyedit_liveedit.LiveEdit)",
        "networks": note,
        "edit_layer": hparams.edit_layer,
        "precision": precision,
        **(settings or {}),
    }
    try:
        focus = "model.opt_model" if hasattr(model, "opt_model") else ""
        run = run_sequence("LiveEdit", edit_batches, apply_edit, probe, editor, tracker, recorded, focus=focus)
    finally:
        editor.detach_hooks()
    run.settings["experts_in_library"] = len(editor.library)
    return run, editor
