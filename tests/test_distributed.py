"""Data-parallel meta-training (``easyedit/distributed.py``) with torch.distributed's gloo backend on the CPU.

The semantics tested: each rank computes LiveEdit's losses on its own batch (the routing losses contrast that batch
alone) and DDP averages the gradients, so N ranks after ``T`` steps hold the parameters one process reaches by
stepping on the average of the per-shard losses, ``(1/N) sum_r L(batch_r)``, with the same random draws per shard.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from distributed_workers import STEPS_SEED, ddp_worker, hparams_of

from easyedit_liveedit import LiveEdit
from easyedit_liveedit.easyedit.distributed import MetaStep
from easyedit_liveedit.toyworld.layout import PROJECT_ROOT

WORLD_SIZE, STEPS, BATCH, LR = 2, 3, 4, 0.5
# Tolerance (absolute, per parameter element): DDP's all-reduce sums the same float32 gradients in another order
# than one backward through the summed loss. Measured here (2026-12-01): the first step's gradients differ by at most
# 3.0e-8 and the parameters after three SGD steps (lr 0.5) by 4.8e-7, while the networks move by 1.8 and a rank
# stepping on its own shard alone ends 1.1 away. (Adam would not do for this comparison: it divides each element by
# sqrt(v) + 1e-8, so float noise in gradient entries near zero becomes an update difference of up to ~lr.)
TOLERANCE = 1e-5
HPARAMS = dict(batch_size=BATCH, filter_lambda=1.0)


@pytest.fixture(scope="module")
def inputs(small_world, tmp_path_factory):
    """``STEPS`` steps of ``WORLD_SIZE`` shards of ``BATCH`` records each, and the networks both runs start from."""
    from easyeditor import VQADataset

    folder = tmp_path_factory.mktemp("ddp")
    hparams = hparams_of(small_world, **HPARAMS)
    with small_world.easyedit_patches():
        data = VQADataset(str(small_world.split("vqa_train")), size=STEPS * WORLD_SIZE * BATCH, config=hparams)
        batches = [[{k: v for k, v in data.collate_fn([data[i] for i in range(start, start + BATCH)]).items()
                     if k != "cond"} for start in range(t * WORLD_SIZE * BATCH, (t + 1) * WORLD_SIZE * BATCH, BATCH)]
                   for t in range(STEPS)]  # fmt: skip
    torch.manual_seed(0)
    initial = LiveEdit(small_world.load_model(), hparams).net.state_dict()
    torch.save({"batches": batches, "initial": initial, "hparams": HPARAMS}, folder / "inputs.pt")
    return folder, batches, initial


def single_process_reference(world, batches, initial) -> tuple[dict, dict]:
    """One process, one SGD step per global step on the mean of the per-shard losses; returns the final networks and
    the first step's gradients."""
    editor = LiveEdit(world.load_model(), hparams_of(world, **HPARAMS))
    editor.load_state_dict(initial)
    editor.train()
    step = MetaStep(editor)
    optimizer = torch.optim.SGD(editor.net.parameters(), lr=LR)
    first = {}
    for t, shards in enumerate(batches):
        losses = []
        for shard in shards:
            torch.manual_seed(STEPS_SEED + t)  # each rank's random distractor draws at step t
            losses.append(step(shard)[0])
        (sum(losses) / len(losses)).backward()
        first = first or {n: p.grad.clone() for n, p in editor.net.named_parameters()}
        optimizer.step()
        optimizer.zero_grad()
    return {k: v.detach().clone() for k, v in editor.net.state_dict().items()}, first


def max_difference(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_two_gloo_ranks_reach_the_single_process_parameters(small_world, inputs):
    folder, batches, initial = inputs
    cache = str(small_world.layout.root.parent)
    mp.spawn(ddp_worker, args=(str(folder), WORLD_SIZE, cache, LR), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]
    assert max_difference(ranks[0], ranks[1]) == 0.0  # replicas stay bit-identical
    reference, gradients = single_process_reference(small_world, batches, initial)
    assert max_difference(torch.load(folder / "grad0.pt", weights_only=True), gradients) < TOLERANCE
    assert max_difference(ranks[0], reference) < TOLERANCE
    assert max_difference(initial, reference) > 1e3 * TOLERANCE  # the steps moved the networks
    assert all((folder / f"caught{r}").read_text() == "True" for r in range(WORLD_SIZE))  # drift is detected


def test_a_rank_alone_does_not_reach_them(small_world, inputs):
    """What the test above guards: without averaging, a rank stepping on its own shard ends elsewhere."""
    _, batches, initial = inputs
    alone, _ = single_process_reference(small_world, [[shards[0]] for shards in batches], initial)
    reference, _ = single_process_reference(small_world, batches, initial)
    assert max_difference(alone, reference) > 1e3 * TOLERANCE


def test_torchrun_meta_trains_the_toy_world_with_one_writer(small_world, tmp_path):
    """The README's command on the small world: two processes, one archive and provenance record, rank 0 logs."""
    results = tmp_path / "results"
    env = dict(os.environ, EASYEDIT_LIVEEDIT_CACHE=str(small_world.layout.root.parent), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")  # fmt: skip
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [
        str(torchrun), "--nproc_per_node", "2", "-m", "easyedit_liveedit.bench.meta_train",
        "--hparams", str(PROJECT_ROOT / "hparams/TRAINING/LiveEdit/toy-blip2.yaml"), "--toy-world", "small",
        "--max-iters", "6", "--val-size", "8", "--results-dir", str(results), "--threads", "1",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    archive = results / "models" / "LiveEdit" / "blip2"
    written = sorted(p.name for p in archive.parent.iterdir())
    assert written == ["blip2", "blip2.provenance.json", "blip2.training.json"]
    assert output.count("Saving model to") == 1 and "[rank 1] INFO" not in output and "[rank 0] INFO" in output
    assert output.count("LiveEdit archive:") == 1 and "(2 process(es))" in output
    saved = torch.load(archive, weights_only=True)
    assert saved["step"] == 5  # EasyEdit's loop validates (and saves) at step max_iters - 1
