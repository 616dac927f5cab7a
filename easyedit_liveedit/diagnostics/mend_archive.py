"""Train a MEND archive with EasyEdit's own ``MultimodalTrainer``, for the NaN-guard reproduction.

The diagnostic must run MEND as EasyEdit users do, with networks trained by EasyEdit's trainer, not
with anything of ours. This module only prepares the call: it loads the training YAML, sizes the train set so
that EasyEdit's epoch arithmetic does not round to zero epochs, runs ``MultimodalTrainer.run()`` and returns the
path of the archive the trainer wrote (``<results_dir>/models/MEND/<model_name>``).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import logging
from pathlib import Path
from typing import Any

from .. import compat

LOG = logging.getLogger(__name__)


def train_mend_archive(
    training_hparams: Any,
    train_json: str | Path,
    val_json: str | Path,
    steps: int | None = None,
    patches: contextlib.AbstractContextManager | None = None,
) -> Path:
    """Meta-train MEND with EasyEdit's ``MultimodalTrainer`` on VQA records; returns the archive path.

    Args:
        training_hparams: EasyEdit's ``MENDMultimodalTrainingHparams`` (a ``hparams/TRAINING/MEND`` YAML).
        train_json, val_json: MMEdit VQA files.
        steps: training steps (None: the YAML's ``max_iters``). The train set is cut to ``steps + 1`` records:
            EasyEdit runs ``round(max_iters / len(train_set))`` epochs, which is 0 for a short run on a large set.
        patches: a context in which EasyEdit's constructors build the right backbone (e.g. the toy world's
            ``easyedit_patches()``); None for EasyEdit's defaults.

    Returns:
        The archive path; it exists when this returns (``FileNotFoundError`` otherwise).
    """
    easyeditor = importlib.import_module("easyeditor")
    config = copy.deepcopy(training_hparams)
    if steps is not None:
        config.max_iters = steps
    # EasyEdit saves the archive only at a validation, and its loop stops at step max_iters - 1: validate there
    config.val_interval = min(config.val_interval, max(config.max_iters - 1, 1))
    config.final_eval = False  # the run only needs the archive; EasyEdit saves it at each validation
    config.debug = False  # EasyEdit skips saving when debug is set and save is not
    with contextlib.ExitStack() as stack:
        if patches is not None:
            stack.enter_context(patches)
        stack.enter_context(compat.cuda_to_cpu())
        train_set = easyeditor.VQADataset(str(train_json), config=config, size=config.max_iters + 1)
        val_set = easyeditor.VQADataset(str(val_json), config=config, size=max(config.val_steps, 1))
        trainer = easyeditor.MultimodalTrainer(config=config, train_set=train_set, val_set=val_set)
        trainer.run()
    path = Path(trainer.save_path)
    if not path.is_file():
        raise FileNotFoundError(f"MultimodalTrainer wrote no archive at {path}")
    LOG.info("MEND archive trained for %d steps: %s", config.max_iters, path)
    return path
