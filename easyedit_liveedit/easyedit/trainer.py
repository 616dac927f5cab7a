"""``LiveEditMultimodalTrainer``: EasyEdit's ``MultimodalTrainer`` loop with LiveEdit's meta-training step.

EasyEdit's ``run()`` loop, logging, validation schedule, early stopping and checkpoints are used as they are; only
``edit_step`` is LiveEdit's: ``liveedit.train_step.meta_losses`` in training, and in validation the accuracies of
the real inference path (``routed_accuracies``: the batch's edits in a fresh library, hard + soft routing), so the
logged accuracies are what editing will deliver.

The batches are EasyEdit's (``VQADataset`` / ``CaptionDataset``), but with ``questions: editor`` (the default)
every question in them is rendered as EasyEdit's editor renders an edit (``questions.py``), not with the dataset's
template.

What the trainer sets up itself, instead of EasyEdit's ``BaseTrainer.__init__`` (which builds the model with
``get_model`` and moves it whole to ``config.device``):

- the backbone (``models.build_backbone``): EasyEdit's ``get_model`` for ``blip2``/``minigpt4`` with the
  vision-language glue loaded from the checkpoints (``checkpoints.py``), and LLaVA-1.5 (``model_name: llava``),
  which the wheel cannot build; a backbone sharded with ``device_map`` stays where it is;
- devices and precision (``placement.py``): batches go to the backbone's input device; ``precision`` (``fp32``,
  ``bf16``, ``fp16``) sets the autocast of every step; loss scaling whenever fp16 computes; a step whose gradients
  are not finite is skipped and counted (``info["skipped_steps"]``), not fatal as in EasyEdit's ``train_step``;
- data parallelism under ``torchrun`` (``distributed.py``): DDP over LiveEdit's networks, rank 0 writes;
- a resume point every ``model_save_pt`` steps (``<archive>.resume``: networks, optimiser, learning-rate schedule,
  steps taken, seconds trained, the hparams): a run that is cut (a session ends, the machine goes away) and started
  again with the same hparams trains only the steps left, with the schedule where it stopped; the batches after the
  cut are drawn in a new random order. A resume point of other hparams is ignored, with a warning; a finished run
  removes it.

The attributes EasyEdit's ``run()``/``validate()``/``save_state()`` read are the ones ``BaseTrainer.__init__``
sets, with the same meaning.
"""

from __future__ import annotations

import copy
import importlib
import logging
import os
import time
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from ..liveedit.train_step import routed_accuracies
from . import distributed, placement
from .archive import CONFIG_KEY, check_config
from .distributed import MetaStep, RankShard
from .editable import LiveEdit
from .models import build_backbone, is_sharded
from .questions import EditorQuestions
from .validate import validate_dataset

LOG = logging.getLogger(__name__)

MultimodalTrainer = importlib.import_module("easyeditor.trainer.MultimodalTrainer").MultimodalTrainer
_utils = importlib.import_module("easyeditor.trainer.utils")
_ALG_TRAIN_DICT = importlib.import_module("easyeditor.util.alg_train_dict").ALG_TRAIN_DICT


class LiveEditMultimodalTrainer(MultimodalTrainer):
    """Meta-trains LiveEdit's generator, key extractors and sentinel with the backbone frozen."""

    def __init__(self, config: Any, train_set: Any, val_set: Any) -> None:
        self.job = distributed.from_environment()
        config.check_paths()  # name the key of a missing file before anything is built
        for name, dataset in (("train_set", train_set), ("val_set", val_set)):  # EasyEdit skips bad records silently
            validate_dataset(dataset, f"{type(self).__name__}: {name} ({type(dataset).__name__})", unique_edits=False)
        if config.questions == "editor":  # train on edits as the editor will present them (questions.py)
            train_set, val_set = EditorQuestions(train_set), EditorQuestions(val_set)
        if self.job.enabled:
            train_set = RankShard(train_set, self.job)
        _check_training_config(config, len(train_set))
        torch.manual_seed(config.seed)  # the same random distractors on every rank (distributed.py)
        self.config = config
        self.device = distributed.training_device(self.job, config)
        if self.job.enabled and self.device.type == "cuda":
            config.device = self.device.index  # EasyEdit's collate_fn moves batches to config.device

        # The model: LiveEdit around the frozen backbone (BaseTrainer.__init__'s get_model + ALG_TRAIN_DICT).
        backbone = build_backbone(config)
        self.alg_module = _ALG_TRAIN_DICT[config.alg.upper()]
        self.model = self.alg_module(backbone, config, lambda: copy.deepcopy(backbone))
        if not isinstance(self.model, LiveEdit):
            raise TypeError(f"config key 'alg' must select LiveEdit, got {type(self.model).__name__}")
        self.original_model = self.model.model
        if not is_sharded(backbone):
            self.model.to(self.device)
        elif config.final_eval:
            raise ValueError(
                f"{getattr(config, 'source', None) or '<config>'}: key 'final_eval' must be false for a backbone "
                "sharded over devices (model_parallel): EasyEdit's final evaluation moves the model to one device"
            )

        self.train_set, self.val_set = train_set, val_set
        self.train_loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True,
                                       collate_fn=train_set.collate_fn)  # fmt: skip
        self.val_loader = DataLoader(val_set, batch_size=config.val_batch_size, shuffle=False,
                                     collate_fn=val_set.collate_fn)  # fmt: skip
        if config.eval_only:
            config.max_iters = 0  # evaluate once and quit, as EasyEdit
        else:
            self.OptimizerClass = getattr(torch.optim, config.opt)
            self.opt = self.OptimizerClass(self.model.outer_parameters(), lr=config.lr)
            # the authors' schedule: the learning rate times lr_decay_rate once lr_decay_steps steps were taken
            milestones = [] if config.lr_decay_steps is None else [config.lr_decay_steps]
            self.lr_schedule = torch.optim.lr_scheduler.MultiStepLR(self.opt, milestones, config.lr_decay_rate)
        self.archive = None
        if config.archive is not None:  # resume, as EasyEdit
            archive, config.archive = _utils.load_archive(str(config.archive))
            check_config(archive, self.model.config, config.archive, config.source or "the training hparams")
            self.model.load_state_dict(archive.pop("model"))
            archive.pop(CONFIG_KEY, None)
            opt_state = archive.pop("opt")
            if not config.eval_only:
                self.opt.load_state_dict(opt_state)
            self.archive = archive
        self.lr_opt = None  # LiveEdit learns no edit learning rates (MultimodalTrainer's lr_opt is MEND's)
        self.steps_done = 0  # training steps taken, across resumed runs
        self.seconds_before = 0.0  # seconds the runs before a resume trained (a cut run's time counts too)
        self._started = time.perf_counter()

        model_dir = os.path.join(config.results_dir, "models", config.alg)
        if self.job.is_main and not (config.debug and not config.save):
            os.makedirs(model_dir, exist_ok=True)
        self.save_path = f"{model_dir}/{config.model_name.split('/')[-1]}"
        self.start_time = _utils.formatted_timestamp()
        self.resume_path = f"{self.save_path}.resume"

        # Precision and data parallelism.
        decoder = self.model.adapter.language_model(self.model.model)  # the backbone as LiveEdit wraps it
        self.scaler = placement.grad_scaler(self.device, placement.needs_loss_scaling(config.precision, decoder))
        self.skipped_steps = 0
        self._synchronised = self.job.enabled  # every rank runs the same loop: validation statistics are shared
        self.meta_step = distributed.data_parallel(MetaStep(self.model), self.job)
        if not config.eval_only:
            self._resume()
        LOG.info(
            "LiveEdit meta-training on %s, precision %s, loss scaling %s, %d process(es)",
            self.device, config.precision, "on" if self.scaler.is_enabled() else "off", self.job.world_size,
        )  # fmt: skip

    # ---------------------------------------------------------------------------------------------- one step
    def edit_step(self, batch: dict[str, Any], training: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, dict]:
        """One meta-training (or validation) step; returns EasyEdit's ``(total, edit, loc, base, info)``."""
        editor: LiveEdit = self.model
        editor.train(training)
        batch = placement.to_device(batch, placement.input_device(editor))
        with torch.set_grad_enabled(training), placement.autocast(self.device, self.config.precision):
            total, parts, info = (self.meta_step if training else self.meta_step_module)(batch)
            if not training:
                info.update(routed_accuracies(editor, batch))
        if training:
            self.scaler.scale(total / self.config.accumulate_bs).backward()
        info.update({f"loss/{k}": v for k, v in parts.items()})
        info["loss/total_edit"] = parts["total"]
        zero = torch.zeros(())
        return total.detach(), torch.tensor(parts["rel"]), torch.tensor(parts.get("loc", 0.0)), zero, info

    @property
    def meta_step_module(self) -> MetaStep:
        """The step without DDP (validation runs no collective)."""
        return getattr(self.meta_step, "module", self.meta_step)

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """EasyEdit's ``train_step`` with loss scaling, and a non-finite step skipped and counted instead of fatal."""
        *_, info = self.edit_step(batch, training=True)
        if self.global_iter > 0 and self.global_iter % self.config.accumulate_bs == 0:
            self.scaler.unscale_(self.opt)  # true gradients, for clipping and the finiteness check
            grad = torch.nn.utils.clip_grad_norm_(self.model.outer_parameters(), self.config.grad_clip)
            if torch.isfinite(grad):
                self.scaler.step(self.opt)  # opt.step() when loss scaling is off
                self.lr_schedule.step()
                info["grad"] = grad.item()
                info["lr"] = self.lr_schedule.get_last_lr()[0]
            else:
                self.skipped_steps += 1
                LOG.warning("step %d: gradients are not finite; step skipped (%d so far)", self.global_iter,
                            self.skipped_steps)  # fmt: skip
            self.scaler.update()  # with loss scaling: a smaller scale after a non-finite step
            self.opt.zero_grad()
            self.steps_done += 1
            if self.steps_done % self.config.model_save_pt == 0:
                self._save_resume_point()
            info["skipped_steps"] = self.skipped_steps
            if self.scaler.is_enabled():
                info["loss_scale"] = self.scaler.get_scale()
        return info

    # ------------------------------------------------------------------------------- one writer, same decisions
    def validate(self, steps: int | None = None, log: bool = False) -> dict[str, float]:
        """EasyEdit's validation; under DDP every rank takes rank 0's statistics (one early-stopping decision)."""
        stats = super().validate(steps, log)
        return distributed.broadcast(stats, self.job) if self._synchronised else stats

    def save_state(self, stats: dict[str, float]) -> None:
        """EasyEdit's checkpoint (``BaseTrainer.save_state``: the same entries, the previous file kept as ``.bk``) with
        the config the networks are trained with under ``archive.CONFIG_KEY``, which loading checks; written by rank 0
        only, the other ranks wait until it is on disk."""
        if self.job.is_main and not ((self.config.debug and not self.config.save) or self.config.eval_only):
            archive = {
                "model": self.model.state_dict(),
                "opt": self.opt.state_dict(),
                "lr_opt": None,  # LiveEdit learns no edit learning rates
                "val_stats": stats,
                "start_time": self.start_time,
                "elapsed_time": _utils.time_delta_seconds(self.start_time),
                "step": self.global_iter,
                CONFIG_KEY: self.model.config.config_dict(),
            }
            LOG.info("Saving model to %s", self.save_path)
            if os.path.exists(self.save_path):
                os.rename(self.save_path, f"{self.save_path}.bk")
            torch.save(archive, self.save_path)
        distributed.barrier(self.job)

    def echo(self, train_step: int, info_dict: dict[str, float], pretty: bool = False) -> None:
        if self.job.is_main:
            super().echo(train_step, info_dict, pretty)

    # ------------------------------------------------------------------------------------------- resume points
    def _resume_key(self) -> dict[str, Any]:
        """The hparams a resume point must share with this run (where outputs go and the archive aside)."""
        values = {k: v for k, v in vars(self.config).items() if k not in ("results_dir", "source", "archive")}
        return {k: str(v) for k, v in values.items()}

    def _save_resume_point(self) -> None:
        if not self.job.is_main:
            return
        state = {"model": self.model.state_dict(), "opt": self.opt.state_dict(),
                 "lr_schedule": self.lr_schedule.state_dict(), "scaler": self.scaler.state_dict(),
                 "steps_done": self.steps_done, "skipped_steps": self.skipped_steps,
                 "seconds": self.seconds_before + time.perf_counter() - self._started,
                 "hparams": self._resume_key()}  # fmt: skip
        torch.save(state, f"{self.resume_path}.tmp")
        os.replace(f"{self.resume_path}.tmp", self.resume_path)  # a cut during the write leaves the last good point

    def _resume(self) -> None:
        """Continue from ``<archive>.resume`` if this run's hparams wrote it (see the module docstring)."""
        if not os.path.isfile(self.resume_path):
            return
        state = torch.load(self.resume_path, map_location="cpu", weights_only=False)
        key = self._resume_key()
        if state["hparams"] != key:
            changed = sorted(k for k in state["hparams"].keys() | key.keys() if state["hparams"].get(k) != key.get(k))
            LOG.warning("%s was written with other hparams (%s): starting from scratch", self.resume_path,
                        ", ".join(changed))  # fmt: skip
            return
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        self.scaler.load_state_dict(state["scaler"])
        self.steps_done, self.skipped_steps = state["steps_done"], state["skipped_steps"]
        self.seconds_before = state["seconds"]
        LOG.info("resuming from %s: %d of %d steps taken", self.resume_path, self.steps_done, self.config.max_iters)

    def run(self) -> None:
        """EasyEdit's ``run()`` over the steps not yet taken; under DDP the final evaluation (and ``results.json``)
        is rank 0's alone."""
        max_iters = self.config.max_iters
        if max_iters is not None and self.steps_done:
            self.config.max_iters = max(max_iters - self.steps_done, 1)  # EasyEdit's loop counts from 0
        try:
            self._run()
        finally:
            self.config.max_iters = max_iters
        if self.job.is_main and os.path.isfile(self.resume_path):
            os.remove(self.resume_path)  # finished: nothing to resume

    def _run(self) -> None:
        if not self.job.enabled:
            return super().run()
        final_eval, self.config.final_eval = self.config.final_eval, False
        try:
            super().run()  # the training loop, every rank in step
        finally:
            self.config.final_eval = final_eval
        distributed.check_in_sync(self.model.net, self.job)
        if final_eval and self.job.is_main:
            # EasyEdit's run() with no step left is its final evaluation alone (best checkpoint, validate, results)
            max_iters, self.config.max_iters, self._synchronised = self.config.max_iters, 0, False
            try:
                super().run()
            finally:
                self.config.max_iters, self._synchronised = max_iters, True
        distributed.barrier(self.job)
        self.meta_step = distributed.release(self.meta_step, self.job)  # training is over: no collective is left


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
