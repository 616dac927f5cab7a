"""LiveEdit in the shape of EasyEdit's own ``multimodal_edit.py``: one function per (method, backbone, data set, step).

The same functions run on both EasyEdit targets (the PyPI wheel and EasyEdit's GitHub main) without a change: on the
toy world by default (the scenes world, built offline into ``.cache/toyworld/scenes`` on first use), or on real data
when the YAMLs point at a real backbone and ``world=None`` is passed with the MMEdit JSON files::

    .venv/bin/python examples/multimodal_edit.py train_LiveEdit_Blip2OPT_VQA test_LiveEdit_Blip2OPT_VQA
    .venv/bin/python examples/multimodal_edit.py --world small edit_LiveEdit_Blip2OPT_VQA
    PYTHONPATH=<EasyEdit main> .venv-main/bin/python examples/multimodal_edit.py train_LiveEdit_Blip2OPT_VQA

    # real data, from Python (EasyEdit's layout: data/ and hparams/ under the working directory)
    train_LiveEdit_Blip2OPT_VQA(world=None, hparams="hparams/TRAINING/LiveEdit/blip2.yaml",
                                train_json="data/vqa_train.json", val_json="data/vqa_eval.json")

Keyword arguments after ``world`` override hparams keys (``max_iters=40``, ``results_dir=...``); ``size`` limits
the records read, as EasyEdit's ``size=``; on the toy world ``val_size`` train records are held out to validate on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from statistics import mean
from typing import Any

import easyedit_liveedit  # noqa: F401  (first: applies the import fixes and registers LiveEdit in EasyEdit)

# isort: split
from easyeditor import CaptionDataset, VQADataset

from easyedit_liveedit import (
    LiveEditMultimodalHparams,
    LiveEditMultimodalTrainer,
    LiveEditMultimodalTrainingHparams,
    MultimodalEditor,
    toyworld,
)
from easyedit_liveedit.bench.archives import split_train_val

LOG = logging.getLogger(__name__)

TOY_TRAINING = "hparams/TRAINING/LiveEdit/toy-blip2.yaml"
TOY_EDITING = "hparams/LiveEdit/toy-blip2.yaml"
METRICS = ("rewrite_acc", "rephrase_acc", "image_rephrase_acc", "locality_acc", "multimodal_locality_acc")


def print_result(metrics: list[dict]) -> dict[str, float]:
    """EasyEdit's five metrics, averaged over the edits (as EasyEdit's ``print_result``); returns them."""
    result = {name: mean(float(m["post"][name]) for m in metrics) for name in METRICS if name in metrics[0]["post"]}
    for name, value in result.items():
        print(f"{name}: {value:.4f}")
    return result


@contextlib.contextmanager
def _setting(
    cls: type, hparams: str, world: str | None, overrides: dict[str, Any]
) -> Iterator[tuple[Any, Any, Callable[[str], Path]]]:
    """The hparams (overrides applied), the toy world or None, and the data split reader; EasyEdit's constructors
    build the toy backbone and read its images inside the block."""
    loaded = cls.from_hparams(hparams)
    for key, value in overrides.items():
        if not hasattr(loaded, key):
            raise TypeError(f"{hparams}: unknown key {key!r} for {cls.__name__}")
        setattr(loaded, key, value)
    if world is None:
        yield loaded, None, None
        return
    toy = toyworld.load(world)
    toy.apply_paths(loaded)
    with toy.easyedit_patches():
        yield loaded, toy, toy.split


def _train(
    dataset: type,
    kind: str,
    world: str | None,
    hparams: str,
    train_json: str | None,
    val_json: str | None,
    size: int | None,
    val_size: int,
    overrides: dict[str, Any],
) -> Path:
    """Meta-train LiveEdit with EasyEdit's trainer loop; returns the archive it wrote."""
    with _setting(LiveEditMultimodalTrainingHparams, hparams, world, overrides) as (config, toy, split):
        if toy is not None:  # validate on held-out train records: the eval split is only for scoring edits
            train_json, val_json = split_train_val(
                split(f"{kind}_train"), val_size, Path(config.results_dir) / "split"
            )
        if train_json is None or val_json is None:
            raise ValueError("world=None: pass train_json and val_json (MMEdit files) for a real backbone")
        train_ds = dataset(str(train_json), config=config, size=size)
        val_ds = dataset(str(val_json), config=config, size=size)
        LiveEditMultimodalTrainer(config=config, train_set=train_ds, val_set=val_ds).run()
    archive = Path(config.results_dir) / "models" / config.alg / str(config.model_name).split("/")[-1]
    print(f"LiveEdit archive: {archive}")
    return archive


def _test(
    dataset: type,
    kind: str,
    world: str | None,
    hparams: str,
    eval_json: str | None,
    size: int | None,
    overrides: dict[str, Any],
) -> dict[str, float]:
    """Edit every record of the eval set, one after another (lifelong editing), and print EasyEdit's metrics."""
    with _setting(LiveEditMultimodalHparams, hparams, world, overrides) as (config, toy, split):
        eval_json = split(f"{kind}_eval") if toy is not None else eval_json
        if eval_json is None:
            raise ValueError("world=None: pass eval_json (an MMEdit file) for a real backbone")
        editor = MultimodalEditor.from_hparams(config)
        eval_ds = dataset(str(eval_json), config=config, size=size)
        metrics, edited_model, _ = editor.edit_dataset(eval_ds, sequential_edit=True, verbose=False)
    print(f"{len(metrics)} sequential edits; experts in the library: {len(edited_model.library)}")
    return print_result(metrics)


# ----------------------------------------------------------------------------------------------- BLIP-2 OPT
def train_LiveEdit_Blip2OPT_VQA(
    world: str | None = toyworld.DEFAULT_CONFIG,
    hparams: str = TOY_TRAINING,
    train_json: str | None = None,
    val_json: str | None = None,
    size: int | None = None,
    val_size: int = 100,
    **overrides: Any,
) -> Path:
    """Meta-train LiveEdit on E-VQA (EasyEdit's ``VQADataset``)."""
    return _train(VQADataset, "vqa", world, hparams, train_json, val_json, size, val_size, overrides)


def train_LiveEdit_Blip2OPT_Caption(
    world: str | None = toyworld.DEFAULT_CONFIG,
    hparams: str = TOY_TRAINING,
    train_json: str | None = None,
    val_json: str | None = None,
    size: int | None = None,
    val_size: int = 100,
    **overrides: Any,
) -> Path:
    """Meta-train LiveEdit on E-IC (EasyEdit's ``CaptionDataset``)."""
    return _train(CaptionDataset, "caption", world, hparams, train_json, val_json, size, val_size, overrides)


def test_LiveEdit_Blip2OPT_VQA(
    world: str | None = toyworld.DEFAULT_CONFIG,
    hparams: str = TOY_EDITING,
    eval_json: str | None = None,
    size: int | None = 100,
    **overrides: Any,
) -> dict[str, float]:
    """Edit the E-VQA eval records in sequence with the archive the editing YAML names."""
    return _test(VQADataset, "vqa", world, hparams, eval_json, size, overrides)


def test_LiveEdit_Blip2OPT_Caption(
    world: str | None = toyworld.DEFAULT_CONFIG,
    hparams: str = TOY_EDITING,
    eval_json: str | None = None,
    size: int | None = 100,
    **overrides: Any,
) -> dict[str, float]:
    """Edit the E-IC eval records in sequence with the archive the editing YAML names."""
    return _test(CaptionDataset, "caption", world, hparams, eval_json, size, overrides)


def edit_LiveEdit_Blip2OPT_VQA(
    world: str | None = toyworld.DEFAULT_CONFIG,
    hparams: str = TOY_EDITING,
    eval_json: str | None = None,
    size: int = 2,
    **overrides: Any,
) -> dict[str, float]:
    """``MultimodalEditor.edit`` with explicit prompts, targets, images and locality inputs (the first ``size`` eval
    records), each edit undone before the next (``sequential_edit=False``), as EasyEdit's ``edit_*_debug`` examples."""
    with _setting(LiveEditMultimodalHparams, hparams, world, overrides) as (config, toy, split):
        source = split("vqa_eval") if toy is not None else eval_json
        if source is None:
            raise ValueError("world=None: pass eval_json (an MMEdit file) for a real backbone")
        records = json.loads(Path(source).read_text())[:size]
        editor = MultimodalEditor.from_hparams(config)
        metrics, _, _ = editor.edit(
            prompts=[r["src"] for r in records],
            targets=[r["alt"] for r in records],
            image=[r["image"] for r in records],  # under the YAML's coco_image, as EasyEdit's datasets read them
            rephrase_prompts=[r["rephrase"] for r in records],
            rephrase_image=[r["image_rephrase"] for r in records],
            locality_inputs={
                "text": {"prompt": [r["loc"] for r in records], "ground_truth": [r["loc_ans"] for r in records]},
                "vision": {
                    "prompt": [r["m_loc_q"] for r in records],
                    "ground_truth": [r["m_loc_a"] for r in records],
                    "image": [r["m_loc"] for r in records],
                },
            },
            sequential_edit=False,
            verbose=False,
        )
    return print_result(metrics)


EXAMPLES = {
    fn.__name__: fn
    for fn in (
        train_LiveEdit_Blip2OPT_VQA,
        train_LiveEdit_Blip2OPT_Caption,
        test_LiveEdit_Blip2OPT_VQA,
        test_LiveEdit_Blip2OPT_Caption,
        edit_LiveEdit_Blip2OPT_VQA,
    )  # fmt: skip
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("examples", nargs="+", choices=sorted(EXAMPLES), help="functions to run, in order")
    parser.add_argument("--world", default=toyworld.DEFAULT_CONFIG, choices=("scenes", "small"), help="the toy world")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    # the small world's archives live apart from the scenes world's (the toy YAMLs name the scenes world's)
    results = {"scenes": {}, "small": {"results_dir": "results/toy-small"}}[args.world]
    archive = {"scenes": {}, "small": {"archive": "results/toy-small/models/LiveEdit/blip2"}}[args.world]
    for name in args.examples:
        print(f"== {name}")
        EXAMPLES[name](world=args.world, **(results if name.startswith("train") else archive))


if __name__ == "__main__":
    main()
