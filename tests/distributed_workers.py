"""Worker processes of the distributed tests (spawned processes import them by name)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

STEPS_SEED = 100  # step t draws its random distractors after torch.manual_seed(STEPS_SEED + t), on every rank


def hparams_of(world, **values):
    from helpers import small_liveedit_hparams

    return small_liveedit_hparams(world, training=True, **values)


def ddp_worker(rank: int, folder: str, world_size: int, cache: str, lr: float) -> None:
    """One rank of the equivalence test: LiveEdit's step under DDP (``distributed.py``) on this rank's shards."""
    os.environ["EASYEDIT_LIVEEDIT_CACHE"] = cache
    torch.set_num_threads(1)
    from easyedit_liveedit import LiveEdit, toyworld
    from easyedit_liveedit.easyedit.distributed import Distributed, MetaStep, check_in_sync, data_parallel

    folder = Path(folder)
    dist.init_process_group("gloo", init_method=f"file://{folder / 'rendezvous'}", rank=rank, world_size=world_size)
    job = Distributed(rank, world_size, rank)
    saved = torch.load(folder / "inputs.pt", weights_only=False)
    world = toyworld.load("small", progress=False)
    editor = LiveEdit(world.load_model(), hparams_of(world, **saved["hparams"]))
    editor.load_state_dict(saved["initial"])
    editor.train()
    step = data_parallel(MetaStep(editor), job)
    optimizer = torch.optim.SGD(editor.net.parameters(), lr=lr)
    for t, shards in enumerate(saved["batches"]):
        torch.manual_seed(STEPS_SEED + t)
        total, _, _ = step(shards[rank])
        total.backward()
        if t == 0:  # the averaged gradients of the first step
            torch.save({n: p.grad.clone() for n, p in editor.net.named_parameters()}, folder / f"grad{rank}.pt")
        optimizer.step()
        optimizer.zero_grad()
    check_in_sync(editor.net, job)
    torch.save(editor.net.state_dict(), folder / f"rank{rank}.pt")
    # the check must catch replicas that drift apart
    if rank == 1:
        with torch.no_grad():
            editor.net.sentinel[0, 0] += 1.0
    try:
        check_in_sync(editor.net, job)
        caught = False
    except RuntimeError:
        caught = True
    (folder / f"caught{rank}").write_text(str(caught))
    del step  # before the process group goes (distributed.release says why)
    dist.destroy_process_group()
