"""Data-parallel meta-training with ``torch.distributed``: DDP over LiveEdit's networks, the backbone replicated.

Launched with ``torchrun --nproc_per_node N`` (which sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``), every process
builds the same frozen backbone on its own device (``cuda:LOCAL_RANK``, or the CPU with the gloo backend) and
meta-trains the same LiveEdit networks. The semantics, exactly:

- the train set is cut into ``N`` equal, fixed shards (record ``i`` goes to rank ``i mod N``; the remainder of the
  division is dropped), and each rank draws its batches of ``batch_size`` records from its own shard, reshuffled
  every epoch (so ``batch_size`` is per process and one step sees ``N * batch_size`` records);
- each rank computes LiveEdit's losses on its local batch alone (the routing losses contrast the local batch:
  InfoNCE over ``batch_size`` edits, not over ``N * batch_size``), and DDP averages the gradients, so one step
  follows the gradient of ``(1/N) sum_r L(batch_r)``: the average of the per-shard losses, each with its own
  in-batch contrast;
- every rank starts from rank 0's networks (DDP broadcasts them) and seeds its random generator with the same seed,
  so the random distractor draws of step ``t`` are the same on every rank;
- validation statistics are rank 0's (broadcast), so early stopping decides the same on every rank; checkpoints,
  logs and ``results.json`` are written by rank 0 only.

Only LiveEdit's networks are parameters of the module DDP wraps (``MetaStep``): the backbone is reached through the
editor without being registered, so DDP neither broadcasts nor all-reduces its billions of frozen weights.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from ..liveedit.losses import liveedit_loss
from ..liveedit.model import LiveEditModel
from ..liveedit.train_step import meta_losses
from . import placement

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job: ``world_size`` 1 means a single process (nothing is distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs and results."""
        return self.rank == 0


def from_environment() -> Distributed:
    """The job ``torchrun`` describes in the environment; initialises the default process group when needed.

    The backend is NCCL when CUDA is available and gloo otherwise. Without ``WORLD_SIZE`` (a plain ``python`` run)
    or with ``WORLD_SIZE=1`` this is a single process and nothing is initialised.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    job = Distributed(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(job.local_rank)
        dist.init_process_group(backend)
        LOG.info("torch.distributed: rank %d of %d (%s)", job.rank, job.world_size, backend)
    return job


def training_device(job: Distributed, hparams: Any) -> torch.device:
    """``cuda:LOCAL_RANK`` for a distributed job with CUDA; otherwise the hparams' device (``placement``)."""
    if job.enabled and torch.cuda.is_available():
        return torch.device("cuda", job.local_rank)
    return placement.hparams_device(hparams)


class RankShard(Dataset):
    """Rank ``rank``'s fixed share of ``dataset``: records ``rank, rank + N, ...``, all shards of equal length."""

    def __init__(self, dataset: Any, job: Distributed) -> None:
        usable = len(dataset) - len(dataset) % job.world_size
        if usable == 0:
            raise ValueError(f"{len(dataset)} training records cannot be shared by {job.world_size} processes")
        self.dataset = dataset
        self.indices = list(range(job.rank, usable, job.world_size))
        self.collate_fn = dataset.collate_fn  # what EasyEdit's loaders batch with

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[self.indices[index]]


class MetaStep(nn.Module):
    """One meta-training step's loss as a module's ``forward``, the module DDP wraps.

    Its only registered submodule is the editor's networks; the editor (and the frozen backbone in it) is held
    without registration. ``forward(batch)`` returns ``(total, parts, info)`` of ``liveedit_loss`` and ``meta_losses``.
    """

    def __init__(self, editor: LiveEditModel) -> None:
        super().__init__()
        self.net = editor.net
        self.__dict__["editor"] = editor  # not a submodule: DDP must not see the backbone

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float], dict[str, float]]:
        config = self.editor.config
        terms, info = meta_losses(self.editor, batch, filter_loss=config.filter_lambda > 0)
        total, parts = liveedit_loss(terms, **config.loss_options())
        return total, parts, info


def data_parallel(step: MetaStep, job: Distributed) -> nn.Module:
    """``step`` wrapped in DDP for a distributed job (gradients averaged over ranks); ``step`` itself otherwise."""
    if not job.enabled:
        return step
    device = next(step.parameters()).device
    return DistributedDataParallel(step, device_ids=[device.index] if device.type == "cuda" else None)


def broadcast(value: Any, job: Distributed) -> Any:
    """Rank 0's ``value`` on every rank (any picklable object); ``value`` itself for a single process."""
    if not job.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_in_sync(module: nn.Module, job: Distributed) -> None:
    """Raise ``RuntimeError`` if ``module``'s parameters differ between ranks (data parallelism gone wrong).

    DDP keeps replicas bit-identical (the same averaged gradients, the same optimizer), so a float64 checksum per
    parameter tensor is compared exactly.
    """
    if not job.enabled:
        return
    local = [float(p.detach().double().sum()) for p in module.parameters()]
    every = [None] * job.world_size
    dist.all_gather_object(every, local)
    differing = [rank for rank, sums in enumerate(every) if sums != every[0]]
    if differing:
        raise RuntimeError(f"LiveEdit's networks differ between rank 0 and rank(s) {differing} after training")


def release(step: nn.Module, job: Distributed) -> nn.Module:
    """``step`` without its DDP wrapper, dropped while the process group is still alive; returns the bare step.

    DDP's reducer holds the process group; if the reducer is the last owner when Python frees it, gloo's destructor
    runs holding the GIL and waits for its worker thread, which may be waiting for the GIL: the process hangs at exit
    (pytorch/pytorch#56297). Dropping DDP first, then ``shutdown``, frees the group without the GIL.
    """
    return getattr(step, "module", step) if job.enabled else step


def shutdown(job: Distributed) -> None:
    """Destroy the default process group (after ``release``); no-op for a single process."""
    if job.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(job: Distributed) -> None:
    """Wait for every rank (no-op for a single process)."""
    if job.enabled:
        dist.barrier()
