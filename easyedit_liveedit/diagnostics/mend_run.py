"""Sequential editing with EasyEdit's own MEND (``easyeditor.trainer.algs.MEND``), diagnosed edit by edit.

What runs is EasyEdit's code: its ``MEND`` class with its ``GradientTransform`` networks, loaded from an
archive written by EasyEdit's ``MultimodalTrainer`` the way ``MendMultimodalRewriteExecutor.init_model`` loads
it (``gtn.`` keys renamed to ``mend.``), and its ``MEND.edit`` computing each update. Only the commit step is
ours: the wheel's executor (``apply_to_model``) fails at its first edit because it passes label strings
where tensors are needed, so the weights ``MEND.edit`` returns are copied into the backbone in place, which
is what the executor would do. Nothing else is changed and nothing is injected.

Settings that decide whether MEND collapses, all recorded in the report:

- ``mode``: ``"train"`` is what EasyEdit's executor does (it never calls ``eval()``), so MEND's normaliser
  re-estimates its statistics from the edits' own tokens, starting afresh at the first edit. ``"eval"``
  uses the statistics stored in the archive; with an untrained archive these are NaN.
- ``edit_lr_scale``: multiplies MEND's learned per-weight edit learning rates (1 = as trained).
- ``precision``: ``"fp16"`` runs the backbone as EasyEdit's BLIP-2 runs on a GPU (OPT weights in fp16, fp16
  autocast where ``Blip2OPT.maybe_autocast`` asks for it; see ``precision.py``); ``"fp32"`` casts the
  backbone to fp32.
"""

from __future__ import annotations

import copy
import importlib
import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..easyedit import compat
from .guard import WeightRollback
from .precision import gpu_like_autocast, set_precision
from .report import RunReport
from .sequence import run_sequence
from .weights import WeightTracker

LOG = logging.getLogger(__name__)

_STATISTICS = ("u_mean", "v_mean", "u_std", "v_std")


def load_mend(model: nn.Module, hparams: Any, archive: str | None) -> nn.Module:
    """EasyEdit's ``MEND`` around ``model``, with its networks loaded from ``archive`` (None: untrained).

    Args:
        model: the backbone (edited in place by ``run_mend``).
        hparams: EasyEdit's ``MENDMultimodalHparams`` (the editing YAML).
        archive: path of a ``MultimodalTrainer`` archive; None leaves MEND untrained (NaN statistics).
    """
    mend_cls = importlib.import_module("easyeditor.trainer.algs.MEND").MEND
    config = copy.deepcopy(hparams)
    if not hasattr(config, "model_parallel"):
        config.model_parallel = False  # MEND.__init__ reads it; the wheel's editing hparams lack it
    with compat.cuda_to_cpu():  # MEND.__init__ moves its networks to f"cuda:{device}"
        mend = mend_cls(model, config, lambda: copy.deepcopy(model))
    if archive is not None:
        # EasyEdit's archives pickle the model config next to the weights, so weights_only cannot load them;
        # the archive is one our own MultimodalTrainer run wrote.
        state = torch.load(archive, map_location="cpu", weights_only=False)
        mend.load_state_dict({k.replace("gtn.", "mend."): v for k, v in state["model"].items()})
    device = next(model.parameters()).device
    mend.mend.to(device)
    mend.edit_lrs.data = mend.edit_lrs.data.to(device)
    for name, param in model.named_parameters():
        param.requires_grad_(name in config.inner_params)  # as the executor does: only edited weights get grads
    return mend


def normaliser_problems(mend: nn.Module) -> list[str]:
    """The MEND transforms whose normaliser statistics hold non-finite values, as ``"<transform>.<buffer>"``."""
    bad = []
    for key, transform in mend.mend.items():
        for stat in _STATISTICS:
            value = getattr(transform, stat)
            if not bool(torch.isfinite(value).all()):
                bad.append(f"{key}.{stat}")
    return bad


def smallest_std(mend: nn.Module) -> float:
    """The smallest normaliser standard deviation over all transforms (near 0: inputs explode when normalised)."""
    values = [
        float(getattr(t, s).min()) for t in mend.mend.values() for s in ("u_std", "v_std") if getattr(t, s).numel()
    ]
    return min(values, default=math.nan)


class MendInPlace:
    """EasyEdit's MEND committing every edit into the backbone in place (sequential editing, no restore).

    ``edit(batch)`` runs ``MEND.edit`` (EasyEdit's code computes the update) and copies the edited weights it
    returns into ``model``; ``forward(batch)`` runs the backbone at the chosen precision. ``close()`` removes
    MEND's hooks from the backbone.
    """

    def __init__(
        self,
        model: nn.Module,
        hparams: Any,
        archive: str | None,
        mode: str = "train",
        edit_lr_scale: float = 1.0,
        precision: str = "fp16",
    ) -> None:
        """
        Args:
            model: EasyEdit's backbone (e.g. ``Blip2OPT``); its ``inner_params`` are overwritten by edits.
            hparams: ``MENDMultimodalHparams`` (the editing YAML).
            archive: MEND archive path (None: untrained MEND, NaN statistics).
            mode: ``"train"`` (EasyEdit's executor) or ``"eval"`` (trained statistics) for MEND's normaliser.
            edit_lr_scale: factor on MEND's learned edit learning rates.
            precision: ``"fp16"`` (as EasyEdit runs BLIP-2 on a GPU) or ``"fp32"``.
        """
        if mode not in ("train", "eval"):
            raise ValueError(f"MEND run: mode must be 'train' or 'eval', got {mode!r}")
        set_precision(model, precision)
        self.model, self.mode, self.precision = model, mode, precision
        self.mend = load_mend(model, hparams, archive)
        self.mend.eval()  # the backbone runs without dropout: the run is deterministic
        self.mend.mend.train(mode == "train")  # only the normaliser's mode is the setting under study
        if edit_lr_scale != 1.0:
            self.mend.edit_lrs.data.mul_(edit_lr_scale)
        self.names = list(hparams.inner_params)
        self._params = dict(model.named_parameters())
        self.statistics_at_start = normaliser_problems(self.mend)
        self._statistics_before_edit = self.statistics_at_start
        self._loss = math.nan
        loss_fn = self.mend.edit_loss_fn

        def observed_loss(config: Any, pred: Any, targ: Any) -> dict[str, Any]:  # reads MEND's edit loss
            out = loss_fn(config, pred, targ)
            self._loss = float(out["nll"].detach())
            return out

        self.mend.edit_loss_fn = observed_loss
        self.settings = {
            "editor": "EasyEdit MEND (easyeditor.trainer.algs.MEND)",
            "archive": archive,
            "normaliser_mode": mode,
            "edit_lr_scale": edit_lr_scale,
            "learned_edit_lrs": [float(x) for x in self.mend.edit_lrs.detach()],
            "precision": precision,
            "weights_dtype": str(self._params[self.names[0]].dtype).replace("torch.", ""),
            "inner_params": self.names,
            "normaliser_nonfinite_at_start": len(self.statistics_at_start),
            "smallest_normaliser_std_at_start": smallest_std(self.mend),
        }

    def edit(self, batch: dict[str, Any]) -> float:
        """One MEND edit committed in place; returns MEND's loss on the edit sample before the edit."""
        self._loss = math.nan
        self._statistics_before_edit = normaliser_problems(self.mend)
        with torch.enable_grad(), gpu_like_autocast(self.model, self.precision):
            edited, _ = self.mend.edit(batch)
        # MEND.edit returns a functional copy holding p + update; commit those weights in place, as
        # EasyEdit's executor does with the same update, so the next edit starts from them
        names = [n for n, _ in self.model.named_parameters()]
        new = dict(zip(names, edited.model.parameters(), strict=True))
        with torch.no_grad():
            for n in self.names:
                self._params[n].copy_(new[n].detach())
        return self._loss

    def forward(self, batch: dict[str, Any]) -> Any:
        """The backbone's output on ``batch`` at this run's precision."""
        with gpu_like_autocast(self.model, self.precision):
            return self.model(batch)

    def suspect(self) -> str:
        """``"nan_normaliser_statistics: ..."`` when MEND's statistics explain a failure, else ``""``."""
        # eval mode uses the statistics as they were before the edit; train mode re-estimates them during it
        bad = self._statistics_before_edit if self.mode == "eval" else normaliser_problems(self.mend)
        if not bad:
            return ""
        when = "before the edit (eval mode uses them as stored)" if self.mode == "eval" else "after re-estimation"
        listed = ", ".join(bad[:4]) + (" ..." if len(bad) > 4 else "")
        return f"nan_normaliser_statistics: non-finite {when}: {listed}"

    def normaliser_state(self) -> dict[str, Any]:
        """MEND's running normaliser state (buffers and the ``norm_init`` flags), for a rollback."""
        return {
            key: ({k: v.clone() for k, v in t.named_buffers()}, getattr(t, "norm_init", None))
            for key, t in self.mend.mend.items()
        }

    def restore_normaliser(self, state: dict[str, Any]) -> None:
        """Put back a ``normaliser_state()`` (train mode updates the statistics during every edit)."""
        with torch.no_grad():
            for key, (buffers, norm_init) in state.items():
                transform = self.mend.mend[key]
                for name, value in buffers.items():
                    setattr(transform, name, value.clone())  # MEND reassigns these buffers, so reassign too
                transform.norm_init = norm_init

    def close(self) -> None:
        """Remove MEND's forward/backward hooks from the backbone."""
        for handle in getattr(self.model, "handles", []):
            handle.remove()
        self.model.__dict__.pop("handles", None)


class MendRollback:
    """Guard rollback for MEND: the edited weights (bit for bit) and, in train mode, MEND's statistics."""

    def __init__(self, stepper: MendInPlace) -> None:
        self.stepper = stepper
        self.weights = WeightRollback(stepper.model, stepper.names)

    def checkpoint(self) -> tuple[Any, dict[str, Any]]:
        return self.weights.checkpoint(), self.stepper.normaliser_state()

    def changes(self, state: tuple[Any, dict[str, Any]]) -> list[str]:
        return self.weights.changes(state[0])

    def problems(self, state: tuple[Any, dict[str, Any]]) -> list[str]:
        return self.weights.problems(state[0])

    def undo(self, state: tuple[Any, dict[str, Any]]) -> None:
        self.weights.undo(state[0])
        self.stepper.restore_normaliser(state[1])


def run_mend(
    model: nn.Module,
    hparams: Any,
    archive: str | None,
    edit_batches: Sequence[dict[str, Any]],
    probe_batch: dict[str, Any],
    mode: str = "train",
    edit_lr_scale: float = 1.0,
    precision: str = "fp16",
    settings: dict[str, Any] | None = None,
) -> RunReport:
    """Edit ``model`` with EasyEdit's MEND, one batch after another, in place, and diagnose every edit.

    Args:
        model, hparams, archive, mode, edit_lr_scale, precision: as for ``MendInPlace``.
        edit_batches: one EasyEdit ``edit_inner`` batch per edit.
        probe_batch: a fixed EasyEdit batch whose logits are checked after each edit.
        settings: extra entries for the report's settings.

    Returns:
        The ``RunReport`` ("MEND (EasyEdit)"). The model keeps every committed edit.
    """
    stepper = MendInPlace(model, hparams, archive, mode, edit_lr_scale, precision)
    try:
        return run_sequence(
            "MEND (EasyEdit)",
            edit_batches,
            stepper.edit,
            lambda: stepper.forward(probe_batch),
            model,
            WeightTracker(model, stepper.names),
            {**stepper.settings, **(settings or {})},
            stepper.suspect,
            focus="opt_model" if hasattr(model, "opt_model") else "",
        )
    finally:
        stepper.close()
