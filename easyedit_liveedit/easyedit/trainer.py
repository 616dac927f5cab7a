"""``LiveEditMultimodalTrainer``: EasyEdit's ``MultimodalTrainer`` loop with LiveEdit's meta-training step.

EasyEdit's ``run()`` loop, logging, validation schedule, early stopping and checkpoints are used as they are; only
``edit_step`` is LiveEdit's: ``liveedit.train_step.meta_losses`` in training, and in validation the accuracies of
the real inference path (``routed_accuracies``: the batch's edits in a fresh library, hard + soft routing), so the
logged accuracies are what editing will deliver.

The batches are EasyEdit's (``VQADataset`` / ``CaptionDataset``), but with ``questions: editor`` (the default)
every question in them is rendered as EasyEdit's editor renders an edit (``questions.py``), not with the dataset's
template.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import torch
from torch import Tensor

from ..liveedit.losses import liveedit_loss
from ..liveedit.train_step import meta_losses, routed_accuracies
from .editable import LiveEdit
from .questions import EditorQuestions

LOG = logging.getLogger(__name__)

MultimodalTrainer = importlib.import_module("easyeditor.trainer.MultimodalTrainer").MultimodalTrainer


class LiveEditMultimodalTrainer(MultimodalTrainer):
    """Meta-trains LiveEdit's generator, key extractors and sentinel with the backbone frozen."""

    def __init__(self, config: Any, train_set: Any, val_set: Any) -> None:
        _check_training_config(config, len(train_set))
        config.check_paths()  # name the key of a missing file before EasyEdit builds the backbone
        if config.questions == "editor":  # train on edits as the editor will present them (questions.py)
            train_set, val_set = EditorQuestions(train_set), EditorQuestions(val_set)
        super().__init__(config, train_set, val_set)
        if not isinstance(self.model, LiveEdit):
            raise TypeError(f"config key 'alg' must select LiveEdit, got {type(self.model).__name__}")

    def edit_step(self, batch: dict[str, Any], training: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, dict]:
        """One meta-training (or validation) step; returns EasyEdit's ``(total, edit, loc, base, info)``."""
        editor: LiveEdit = self.model
        editor.train(training)
        with torch.set_grad_enabled(training):
            terms, info = meta_losses(editor, batch, filter_loss=editor.config.filter_lambda > 0)
            total, parts = liveedit_loss(terms, **editor.config.loss_weights())
        if training:
            (total / self.config.accumulate_bs).backward()
        else:
            info.update(routed_accuracies(editor, batch))
        info.update({f"loss/{k}": v for k, v in parts.items()})
        info["loss/total_edit"] = parts["total"]
        zero = torch.zeros(())
        return total.detach(), torch.tensor(parts["rel"]), torch.tensor(parts.get("loc", 0.0)), zero, info


def _check_training_config(config: Any, train_size: int) -> None:
    """Catch settings with which EasyEdit's loop would silently train nothing or LiveEdit's losses mean nothing."""
    where = getattr(config, "source", None) or "<config>"
    if config.batch_size < 2:
        raise ValueError(f"{where}: key 'batch_size' must be >= 2: LiveEdit's routing losses contrast the batch")
    if config.max_iters is not None and round(config.max_iters / (train_size / config.batch_size)) < 1:
        raise ValueError(
            f"{where}: key 'max_iters' ({config.max_iters}) is under half an epoch of {train_size} records at "
            f"batch_size {config.batch_size}; EasyEdit's run() would round that to 0 epochs and train nothing"
        )
