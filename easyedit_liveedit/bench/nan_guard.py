"""``python -m easyedit_liveedit.bench.nan_guard``: reproduce MEND's sequential-editing collapse, locate it,
and run LiveEdit on the same edit sequence.

It loads the backbone and the MMEdit records the way EasyEdit does (``hparams`` = an EasyEdit MEND editing
YAML; its ``archive`` is a MEND trained by EasyEdit's ``MultimodalTrainer``), edits with EasyEdit's own MEND
edit after edit without restoring, prints one table row per edit (edited-weight norms, update sizes, logits'
range, the module with the least headroom to its dtype's limit, the first non-finite module), writes
``nan_guard.json`` and ``nan_guard.png`` (norm history per edited weight, failing edit marked) into ``--out``,
then does the same with LiveEdit on a fresh copy of the backbone.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from ..diagnostics.liveedit_run import run_liveedit
from ..diagnostics.mend_run import run_mend
from ..diagnostics.report import RunReport, format_table, plot_norm_history, write_json
from ..easyedit import LiveEditMultimodalHparams, compat
from ..easyedit.checkpoints import load_glue
from ..easyedit.placement import hparams_device, input_device, to_device
from .archives import archive_path, toy_world_of, train_archive

LOG = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m easyedit_liveedit.bench.nan_guard",
        description="Run EasyEdit's MEND edit after edit, find where it first goes non-finite, compare LiveEdit.",
    )
    p.add_argument("--hparams", required=True, help="EasyEdit MEND editing YAML (alg_name: MEND)")
    p.add_argument(
        "--data", default=None, help="MMEdit JSON (VQA records) giving the edit sequence (toy world: its eval split)"
    )
    p.add_argument("--edits", type=int, default=10, help="number of sequential edits (default 10)")
    p.add_argument("--out", default="nan_guard_out", help="folder for nan_guard.json and nan_guard.png")
    p.add_argument(
        "--mode",
        choices=("train", "eval"),
        default="train",
        help="MEND normaliser mode: train = what EasyEdit's executor does (re-estimates statistics from the "
        "edits); eval = the archive's trained statistics",
    )
    p.add_argument("--edit-lr-scale", type=float, default=1.0, help="factor on MEND's learned edit lrs")
    p.add_argument(
        "--precision",
        choices=("fp16", "fp32"),
        default="fp16",
        help="fp16 = OPT weights in fp16 with GPU-style autocast, as EasyEdit runs BLIP-2 (default); fp32",
    )
    p.add_argument("--archive", default=None, help="MEND archive (default: the YAML's 'archive')")
    p.add_argument(
        "--train-hparams",
        default=None,
        help="EasyEdit MEND training YAML: if the archive does not exist, train it first with MultimodalTrainer",
    )
    p.add_argument("--train-data", default=None, help="VQA JSON to train on (default: the toy world's train split)")
    p.add_argument("--train-steps", type=int, default=None, help="training steps (default: the YAML's max_iters)")
    p.add_argument("--probe", type=int, default=4, help="records in the fixed probe batch (default 4)")
    p.add_argument("--liveedit-hparams", default=None, help="LiveEdit editing YAML (skip LiveEdit if absent)")
    p.add_argument("--liveedit-edits", type=int, default=None, help="edits for LiveEdit (default: --edits)")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: these small matrices do not split well)"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log every edit")
    return p.parse_args(argv)


def load_mend_hparams(path: str) -> Any:
    """EasyEdit's ``MENDMultimodalHparams`` from an editing YAML written for EasyEdit main or for the wheel.

    The wheel's class requires ``alg: MEND`` (main's YAMLs have only ``alg_name``) and rejects keys main added
    (e.g. ``exact_match``); both are reconciled here, with a warning naming each dropped key.
    """
    easyeditor = importlib.import_module("easyeditor")
    cls = easyeditor.MENDMultimodalHparams
    with open(path, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    if not isinstance(config, dict) or config.get("alg_name", config.get("alg")) != "MEND":
        raise ValueError(f"{path}: expected a MEND editing YAML (alg_name: MEND)")
    config.setdefault("alg", "MEND")
    known = {f.name for f in dataclasses.fields(cls)}
    for key in sorted(set(config) - known):
        LOG.warning("%s: key %r is not known to easyeditor 0.0.1.dev0's MENDMultimodalHparams; ignored", path, key)
        config.pop(key)
    hparams = cls(**cls.construct_float_from_scientific_notation(config))  # YAML reads 1e-4 as a string
    return cpu_safe_device(hparams)


def cpu_safe_device(hparams: Any) -> Any:
    """Write an integer ``device`` as ``"cuda:<n>"`` when CUDA is unavailable; returns ``hparams``.

    EasyEdit's datasets and trainer call ``.to(hparams.device)``; an integer there means ``cuda:<n>`` to torch,
    which ``compat.cuda_to_cpu`` only redirects when it is spelled as a CUDA device.
    """
    if isinstance(hparams.device, int) and not torch.cuda.is_available():
        hparams.device = f"cuda:{hparams.device}"
    return hparams


@contextlib.contextmanager
def easyedit_context(world: Any | None) -> Iterator[None]:
    """The context in which EasyEdit's constructors build the YAML's backbone and read its data on this machine."""
    with contextlib.ExitStack() as stack:
        if world is not None:
            stack.enter_context(world.easyedit_patches())
        stack.enter_context(compat.cuda_to_cpu())
        stack.enter_context(compat.baseline_fixes())
        yield


def load_backbone(hparams: Any, world: Any | None) -> torch.nn.Module:
    """A fresh backbone built by EasyEdit's own constructor for ``hparams`` (call inside ``easyedit_context``), on
    the hparams' device, with the checkpoints of its vision-language glue loaded (``easyedit.checkpoints``)."""
    if world is not None:
        model = world.load_model()
    else:
        model = importlib.import_module("easyeditor.trainer.models").get_model(hparams).eval()
        load_glue(model, hparams)
    return model.to(hparams_device(hparams))


def on_model_device(model: torch.nn.Module, *batches: dict[str, Any]) -> list[dict[str, Any]]:
    """``batches`` with their tensors where ``model`` takes its inputs (EasyEdit's datasets yield CPU tensors)."""
    return [to_device(batch, input_device(model)) for batch in batches]


def load_dataset(hparams: Any, data: str, size: int) -> Any:
    """EasyEdit's ``VQADataset`` over the first ``size`` usable records of ``data``."""
    easyeditor = importlib.import_module("easyeditor")
    return easyeditor.VQADataset(str(data), config=hparams, size=size)


def batches(dataset: Any, count: int, probe: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``count`` single-record ``edit_inner`` batches (the edit sequence, cycling through the data set) and one
    fixed probe batch of ``probe`` records (their prompts with the edit targets, plus their locality prompts)."""
    n = len(dataset)
    if n == 0:
        raise ValueError("nan_guard: the data set has no usable record")
    edits = [dataset.collate_fn([dataset[i % n]])["edit_inner"] for i in range(count)]
    probe_batch = dataset.collate_fn([dataset[i] for i in range(min(probe, n))])["edit_inner"]
    return edits, probe_batch


def run(args: argparse.Namespace) -> list[RunReport]:
    """Everything but the printing: the MEND run, then the LiveEdit run; returns their reports."""
    easyeditor = importlib.import_module("easyeditor")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    hparams = load_mend_hparams(args.hparams)
    world = toy_world_of(hparams)
    archive = args.archive if args.archive is not None else hparams.archive
    if archive is not None and not Path(archive).is_file():
        if not args.train_hparams:
            raise FileNotFoundError(
                f"{args.hparams}: MEND archive {archive!r} does not exist; train it with EasyEdit's "
                "MultimodalTrainer (--train-hparams hparams/TRAINING/MEND/<model>.yaml) or pass --archive"
            )
        training = cpu_safe_device(easyeditor.MENDMultimodalTrainingHparams.from_hparams(args.train_hparams))
        if world is not None:
            world.apply_paths(training)
        train_json = args.train_data or (world.split("vqa_train") if world is not None else None)
        if train_json is None:
            raise ValueError("--train-data is required to train a MEND archive outside the toy world")
        # Train exactly where --archive points, else below --out: never over the archive a YAML shares with
        # other runs. EasyEdit's trainer saves at <results_dir>/models/<alg>/<model>, so --archive must be such a path.
        wanted = Path(args.archive) if args.archive else None
        training.results_dir = str(wanted.parents[2] if wanted is not None and len(wanted.parents) > 2 else out)
        if wanted is not None and archive_path(training) != wanted:
            raise ValueError(
                f"--archive {wanted}: missing, and EasyEdit's trainer can only write <dir>/models/"
                f"{training.alg}/{archive_path(training).name}; give such a path or an existing archive"
            )
        if args.train_steps is not None:
            training.max_iters = args.train_steps
        patches = world.easyedit_patches if world is not None else None
        archive = str(train_archive("MEND", training, train_json, "VQADataset", out / "training", patches))
    data = args.data or (str(world.split("vqa_eval")) if world is not None else None)
    if data is None:
        raise ValueError("--data is required outside the toy world")
    settings = {"hparams": args.hparams, "data": data, "edits": args.edits}
    count = args.liveedit_edits or args.edits
    with easyedit_context(world):
        dataset = load_dataset(hparams, data, max(args.edits, count, args.probe))
        edits, probe = batches(dataset, args.edits, args.probe)
        model = load_backbone(hparams, world)
        runs = [
            run_mend(
                model,
                hparams,
                archive,
                on_model_device(model, *edits),
                *on_model_device(model, probe),
                mode=args.mode,
                edit_lr_scale=args.edit_lr_scale,
                precision=args.precision,
                settings=settings,
            )
        ]
        if args.liveedit_hparams:
            live_hparams = LiveEditMultimodalHparams.from_hparams(args.liveedit_hparams)
            live_edits, _ = batches(dataset, count, args.probe)
            fresh = load_backbone(hparams, world)  # a fresh, unedited backbone
            live, _ = run_liveedit(
                fresh,
                live_hparams,
                on_model_device(fresh, *live_edits),
                *on_model_device(fresh, probe),
                tracked_weights=hparams.inner_params,
                precision=args.precision,
                settings={**settings, "hparams": args.liveedit_hparams, "edits": count},
            )
            runs.append(live)
    write_json(runs, out / "nan_guard.json")
    plot_norm_history(runs, out / "nan_guard.png")
    return runs


def main(argv: list[str] | None = None) -> int:
    """Command line: prints the tables; exit status 0 whether or not MEND failed (finding a failure is success)."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    runs = run(args)
    for report in runs:
        print(format_table(report))
        print()
    print(f"wrote {Path(args.out) / 'nan_guard.json'} and {Path(args.out) / 'nan_guard.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
