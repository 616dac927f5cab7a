"""``python -m easyedit_liveedit.bench.meta_train``: meta-train a LiveEdit archive, on one process or many.

The same training as the ``train`` command (``archives.train_archive``: EasyEdit's ``run()`` loop with
``LiveEditMultimodalTrainer``, validation on held-out train records, a provenance record), without Hydra, so that
``torchrun`` can start it once per device::

    torchrun --nproc_per_node 2 -m easyedit_liveedit.bench.meta_train \
        --hparams hparams/TRAINING/LiveEdit/toy-blip2.yaml

Under ``torchrun`` each process trains the same LiveEdit networks on its share of the records (DDP, gradients
averaged; ``easyedit/distributed.py`` says exactly how) and only rank 0 logs at INFO and writes the archive, its
provenance record and the validation split. A YAML whose ``name`` lies in the toy world (or ``--toy-world``) trains
on that world's ``vqa_train`` split; any other needs ``--train-json``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from ..easyedit import distributed
from .archives import archive_path, load_hparams, toy_world_of, train_archive

LOG = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m easyedit_liveedit.bench.meta_train", description=__doc__.split("\n")[0]
    )
    p.add_argument("--hparams", required=True, help="LiveEdit training YAML (hparams/TRAINING/LiveEdit/<model>.yaml)")
    p.add_argument("--train-json", default=None, help="MMEdit VQA records (default: the toy world's vqa_train)")
    p.add_argument("--toy-world", default=None, help="train on this toy world (default: the one the YAML names)")
    p.add_argument("--max-iters", type=int, default=None, help="training steps (default: the YAML's max_iters)")
    p.add_argument("--results-dir", default=None, help="archive goes to <dir>/models/LiveEdit/<model_name>")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None, help="default: the YAML's")
    p.add_argument("--val-size", type=int, default=100, help="train records held out for validation (default 100)")
    p.add_argument("--work-dir", default=None, help="where the train/validation split is written (default: results)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Train; prints the archive's path (rank 0). Exit status 0 on success."""
    args = parse_args(argv)
    job = distributed.from_environment()
    logging.basicConfig(level=logging.INFO if job.is_main else logging.WARNING, force=True,  # easyeditor set one
                        format=f"[rank {job.rank}] %(levelname)s %(name)s: %(message)s")  # fmt: skip
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {key: value for key, value in (("max_iters", args.max_iters), ("results_dir", args.results_dir),
                                               ("precision", args.precision)) if value is not None}  # fmt: skip
    training = load_hparams("LiveEdit", args.hparams, overrides, training=True)
    world = toy_world_of(training, args.toy_world)
    train_json = args.train_json or (world.split("vqa_train") if world is not None else None)
    if train_json is None:
        raise SystemExit("--train-json is required outside the toy world")
    work_dir = Path(args.work_dir or Path(training.results_dir) / "split")
    patches = world.easyedit_patches if world is not None else None
    path = train_archive("LiveEdit", training, train_json, "VQADataset", work_dir, patches, args.val_size)
    distributed.shutdown(job)  # the trainer has released its DDP wrapper (distributed.release)
    if job.is_main:
        print(f"LiveEdit archive: {path} ({job.world_size} process(es))")
    if path != archive_path(training):
        raise RuntimeError(f"the trainer wrote {path}, expected {archive_path(training)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
