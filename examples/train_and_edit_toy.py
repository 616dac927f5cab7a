"""Train LiveEdit on the toy world, then edit 100 facts in sequence: EasyEdit's MMEdit example, with LiveEdit.

Run from the project root (after `make setup`):

    .venv/bin/python examples/train_and_edit_toy.py            # trains first if the archive is missing
    .venv/bin/python examples/train_and_edit_toy.py --retrain

The toy world (the scenes world: 2x2 scenes of real handwritten digits, a small BLIP-2-OPT built by EasyEdit's own
Blip2OPT) is built into .cache/toyworld/scenes on first use. Every step below is EasyEdit's own API; only
`alg_name`/`alg` say LiveEdit.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

import easyedit_liveedit  # noqa: F401  (first: applies the EasyEdit shims and registers LiveEdit)

# isort: split
from easyeditor import VQADataset

from easyedit_liveedit import (
    LiveEditMultimodalHparams,
    LiveEditMultimodalTrainer,
    LiveEditMultimodalTrainingHparams,
    MultimodalEditor,
    toyworld,
)
from easyedit_liveedit.bench.archives import split_train_val


def train(world: toyworld.ToyWorld, val_size: int = 100, **overrides: Any) -> None:
    """Meta-train LiveEdit's expert generator, key extractors and sentinel (the backbone stays frozen).

    ``overrides`` replace keys of the training YAML (the smoke test trains a few steps on the small world)."""
    hparams = world.apply_paths(LiveEditMultimodalTrainingHparams.from_hparams("hparams/TRAINING/LiveEdit/toy-blip2"))
    for key, value in overrides.items():
        setattr(hparams, key, value)
    # validate on held-out train records: the eval split is only for scoring the edits
    train_json, val_json = split_train_val(world.split("vqa_train"), val_size, Path(hparams.results_dir) / "split")
    with world.easyedit_patches():
        train_ds = VQADataset(str(train_json), config=hparams)
        val_ds = VQADataset(str(val_json), config=hparams)
        LiveEditMultimodalTrainer(config=hparams, train_set=train_ds, val_set=val_ds).run()


def edit_100(world: toyworld.ToyWorld, size: int = 100, **overrides: Any) -> None:
    """Edit the first 100 eval facts one after another, then print EasyEdit's five metrics."""
    hparams = world.apply_paths(LiveEditMultimodalHparams.from_hparams("hparams/LiveEdit/toy-blip2"))
    for key, value in overrides.items():
        setattr(hparams, key, value)
    with world.easyedit_patches():
        editor = MultimodalEditor.from_hparams(hparams)
        eval_ds = VQADataset(str(world.split("vqa_eval")), size=size, config=hparams)
        metrics, edited_model, _ = editor.edit_dataset(eval_ds, sequential_edit=True, verbose=False)
    print(f"{len(metrics)} sequential edits; experts in the library: {len(edited_model.library)}")
    for name in ("rewrite_acc", "rephrase_acc", "image_rephrase_acc"):
        pre, post = (np.mean([m[when][name] for m in metrics]) for when in ("pre", "post"))
        print(f"  {name:<26} pre {pre:.3f}   post {post:.3f}")
    for name in ("locality_acc", "multimodal_locality_acc"):  # post-edit answers equal to the unedited ones
        print(f"  {name:<26}             {np.mean([m['post'][name] for m in metrics]):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--retrain", action="store_true", help="meta-train even if the archive exists")
    args = parser.parse_args()
    world = toyworld.load()
    archive = LiveEditMultimodalHparams.from_hparams("hparams/LiveEdit/toy-blip2").archive
    if args.retrain or not Path(archive).exists():
        train(world)
    edit_100(world)


if __name__ == "__main__":
    main()
