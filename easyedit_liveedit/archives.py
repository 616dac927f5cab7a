"""Hparams and archives of the editors the comparison runs: load the EasyEdit YAMLs, train what needs training.

Every method is driven by its EasyEdit hparams YAMLs (``hparams/<ALG>/<model>.yaml`` for editing,
``hparams/TRAINING/<ALG>/<model>.yaml`` for meta-training). This module loads them with the class EasyEdit (or
this plugin) defines for them, applies the run's overrides, and makes sure the editing YAML's ``archive`` exists:
if it does not, the training YAML is run through EasyEdit's own trainer loop (``MultimodalTrainer.run()``;
``LiveEditMultimodalTrainer`` for LiveEdit), and the editing hparams are pointed at the archive it wrote.

Why a separate validation file: EasyEdit's trainer keeps the checkpoint with the best validation loss, so
validating on the records the benchmark edits would leak the benchmark into model selection. Validation uses
the tail of the *train* file instead, which the training subset never reaches.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

LOG = logging.getLogger(__name__)

# method -> (editing hparams class, training hparams class or None), as attribute names of `easyeditor`
# (LiveEdit's classes are exported there by `import easyedit_liveedit`). IKE needs no training.
HPARAMS_CLASSES: dict[str, tuple[str, str | None]] = {
    "LiveEdit": ("LiveEditMultimodalHparams", "LiveEditMultimodalTrainingHparams"),
    "MEND": ("MENDMultimodalHparams", "MENDMultimodalTrainingHparams"),
    "SERAC": ("SERACMultimodalHparams", "SERACMultimodalTrainingHparams"),
    "IKE": ("IKEMultimodalHyperParams", None),
}


def _hparams_class(name: str) -> type:
    return getattr(importlib.import_module("easyeditor"), name)


def load_hparams(
    method: str, path: str | Path, overrides: dict[str, Any] | None = None, training: bool = False
) -> Any:
    """An EasyEdit hparams object for ``method`` from a YAML file, with ``overrides`` applied on top.

    Args:
        method: ``LiveEdit``, ``MEND``, ``SERAC`` or ``IKE``.
        path: the YAML file.
        overrides: keys to replace (e.g. ``max_iters``); each must be a key the class knows.
        training: load as a training YAML (``alg:``) rather than an editing one (``alg_name:``).

    Returns:
        The hparams object. Raises ``FileNotFoundError`` for a missing file and ``TypeError`` naming the key and
        the file for a key the class does not know (EasyEdit's own classes would fail with a bare dataclass error).
    """
    if method not in HPARAMS_CLASSES:
        raise ValueError(f"method {method!r}: expected one of {sorted(HPARAMS_CLASSES)}")
    editing_class, training_class = HPARAMS_CLASSES[method]
    class_name = training_class if training else editing_class
    if class_name is None:
        raise ValueError(f"method {method!r} has no training hparams (it needs no training)")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{method}: hparams file not found: {path}")
    config = yaml.safe_load(path.read_text())
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a mapping of keys to values")
    config.update(overrides or {})
    cls = _hparams_class(class_name)
    if hasattr(cls, "from_dict"):  # this plugin's classes validate every key and type themselves
        return cls.from_dict(config, source=str(path))
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise TypeError(f"{path}: unknown key(s) {', '.join(map(repr, unknown))} for easyeditor's {cls.__name__}")
    missing = sorted(f.name for f in dataclasses.fields(cls) if f.name not in config and _required(f))
    if missing:
        raise ValueError(f"{path}: missing required key(s) {', '.join(map(repr, missing))} for {cls.__name__}")
    return cls(**cls.construct_float_from_scientific_notation(config))  # YAML reads 1e-4 as a string


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def archive_path(training_hparams: Any) -> Path:
    """Where EasyEdit's ``BaseTrainer`` saves the archive: ``<results_dir>/models/<alg>/<model_name>``."""
    model_name = str(training_hparams.model_name).split("/")[-1]
    return Path(training_hparams.results_dir) / "models" / training_hparams.alg / model_name


def split_train_val(train_json: Path, val_size: int, folder: Path) -> tuple[Path, Path]:
    """Train records minus the last ``val_size`` (train file) and those last records (validation file).

    Meta-training validates (and EasyEdit keeps the best checkpoint) on held-out *train* records, never on the
    eval split that the edits are later scored on.
    """
    records = json.loads(Path(train_json).read_text())
    if len(records) <= val_size:
        raise ValueError(f"{train_json}: {len(records)} records; need more than the {val_size} kept for validation")
    folder.mkdir(parents=True, exist_ok=True)
    train_path, val_path = folder / "train.json", folder / "val.json"
    train_path.write_text(json.dumps(records[:-val_size]))
    val_path.write_text(json.dumps(records[-val_size:]))
    return train_path, val_path


def _with_progress(trainer: Any, total: int, desc: str) -> tqdm:
    """A progress bar that advances with every EasyEdit ``train_step`` (EasyEdit's loop has none)."""
    bar = tqdm(total=total, desc=desc, unit="step", leave=False)
    step = trainer.train_step

    def train_step(batch: Any) -> Any:
        info = step(batch)
        bar.update(1)
        return info

    trainer.train_step = train_step  # an instance attribute: the trainer object alone sees it
    return bar


def train_archive(
    method: str,
    training_hparams: Any,
    train_json: str | Path,
    dataset_class: str,
    work_dir: str | Path,
    patches: Callable[[], contextlib.AbstractContextManager] | None = None,
    val_size: int = 100,
) -> Path:
    """Meta-train ``method`` with EasyEdit's trainer loop on MMEdit records; returns the archive it wrote.

    Args:
        method: ``LiveEdit`` (``LiveEditMultimodalTrainer``), ``MEND`` or ``SERAC`` (EasyEdit's
            ``MultimodalTrainer``).
        training_hparams: the training hparams (``max_iters`` etc. already set).
        train_json: the train split; its last ``val_size`` records become the validation set.
        dataset_class: ``VQADataset`` or ``CaptionDataset`` (EasyEdit's).
        work_dir: where the train/validation split files are written.
        patches: factory of the context in which EasyEdit builds the backbone (the toy world's patches).
        val_size: validation records.

    Returns:
        The archive path (``<results_dir>/models/<alg>/<model>``); it exists when this returns.
    """
    easyeditor = importlib.import_module("easyeditor")
    config = copy.deepcopy(training_hparams)
    config.final_eval = False  # the comparison evaluates the archive itself; EasyEdit saves at each validation
    config.debug = False  # EasyEdit skips saving when debug is set and save is not
    config.save = True
    config.val_interval = min(config.val_interval, max(config.max_iters // 2, 1))  # validate (and save) >= once
    train_path, val_path = split_train_val(Path(train_json), val_size, Path(work_dir))
    # EasyEdit runs round(max_iters / (len(train_set) / batch_size)) epochs: never let that round to zero.
    size = min(len(json.loads(train_path.read_text())), config.max_iters * config.batch_size + 1)
    if method == "LiveEdit":
        trainer_class = importlib.import_module("easyedit_liveedit").LiveEditMultimodalTrainer
    else:
        trainer_class = easyeditor.MultimodalTrainer
    dataset = getattr(easyeditor, dataset_class)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if patches is not None:
            stack.enter_context(patches())
        stack.enter_context(importlib.import_module("easyedit_liveedit.compat").cuda_to_cpu())
        train_set = dataset(str(train_path), config=config, size=size)
        val_set = dataset(str(val_path), config=config, size=min(val_size, max(config.val_steps, 1)))
        trainer = trainer_class(config, train_set, val_set)
        bar = _with_progress(trainer, config.max_iters, f"train {method}")
        try:
            trainer.run()
        finally:
            bar.close()
    path = Path(trainer.save_path)
    if not path.is_file():
        raise FileNotFoundError(f"{method}: EasyEdit's trainer wrote no archive at {path}")
    LOG.info(
        "%s archive trained (%d steps, %.0f s): %s", method, config.max_iters, time.perf_counter() - started, path
    )
    return path
