"""``python -m easyedit_liveedit.diagnostics.nan_guard``: reproduce MEND's sequential-editing collapse, locate it,
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
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from .. import compat
from .liveedit_run import run_liveedit
from .mend_run import run_mend
from .report import RunReport, format_table, plot_norm_history, write_json

LOG = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m easyedit_liveedit.diagnostics.nan_guard",
        description="Run EasyEdit's MEND edit after edit, find where it first goes non-finite, compare LiveEdit.",
    )
    p.add_argument("--hparams", required=True, help="EasyEdit MEND editing YAML (alg_name: MEND)")
    p.add_argument("--data", required=True, help="MMEdit JSON (VQA records) giving the edit sequence")
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
    p.add_argument("--probe", type=int, default=4, help="records in the fixed probe batch (default 4)")
    p.add_argument("--liveedit-hparams", default=None, help="LiveEdit editing YAML (skip LiveEdit if absent)")
    p.add_argument("--liveedit-edits", type=int, default=None, help="edits for LiveEdit (default: --edits)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every edit")
    return p.parse_args(argv)


def load_world(hparams: Any, data: str, size: int) -> tuple[torch.nn.Module, Any]:
    """EasyEdit's backbone and its VQA data set for ``hparams`` (the toy world's when the YAML names it)."""
    from .. import toyworld

    return toyworld.load_backbone_and_dataset(hparams, data, size)


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
    import easyeditor

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    hparams = easyeditor.MENDMultimodalHparams.from_hparams(args.hparams)
    archive = args.archive if args.archive is not None else hparams.archive
    if archive is not None and not Path(archive).is_file():
        raise FileNotFoundError(f"{args.hparams}: MEND archive {archive!r} does not exist")
    settings = {"hparams": args.hparams, "data": args.data, "edits": args.edits}
    with compat.cuda_to_cpu():
        model, dataset = load_world(hparams, args.data, max(args.edits, args.probe))
        edits, probe = batches(dataset, args.edits, args.probe)
        mend = run_mend(
            model,
            hparams,
            archive,
            edits,
            probe,
            mode=args.mode,
            edit_lr_scale=args.edit_lr_scale,
            precision=args.precision,
            settings=settings,
        )
        runs = [mend]
        if args.liveedit_hparams:
            from ..liveedit_hparams import LiveEditMultimodalHparams

            live_hparams = LiveEditMultimodalHparams.from_hparams(args.liveedit_hparams)
            count = args.liveedit_edits or args.edits
            model, dataset = load_world(hparams, args.data, max(count, args.probe))  # the unedited backbone
            edits, probe = batches(dataset, count, args.probe)
            live, _ = run_liveedit(
                model,
                live_hparams,
                edits,
                probe,
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
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    runs = run(args)
    for report in runs:
        print(format_table(report))
        print()
    print(f"wrote {Path(args.out) / 'nan_guard.json'} and {Path(args.out) / 'nan_guard.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
