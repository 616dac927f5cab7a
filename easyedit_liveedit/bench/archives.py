"""Hparams and archives of the editors the comparison runs: load the EasyEdit YAMLs, train what needs training.

Every method is driven by its EasyEdit hparams YAMLs (``hparams/<ALG>/<model>.yaml`` for editing,
``hparams/TRAINING/<ALG>/<model>.yaml`` for meta-training). This module loads them with the class EasyEdit (or
this plugin) defines for them, applies the run's overrides, and makes sure the editing YAML's ``archive`` exists:
if it does not, the training YAML is run through EasyEdit's own trainer loop (``MultimodalTrainer.run()``;
``LiveEditMultimodalTrainer`` for LiveEdit), and the editing hparams are pointed at the archive it wrote.

Every archive ``train_archive`` writes gets a provenance record beside it (``<archive>.provenance.json``): the
training hparams, the train file's hash, the validation size and the backbone files' sizes and times. The runner
reuses an archive only while a fresh record equals the stored one (``provenance_changes``).

EasyEdit's own trainers (MEND, SERAC) render every training question with the dataset's template; with
``method.questions: editor`` the runner sets ``questions`` on their training hparams (EasyEdit's classes have no
such key), ``train_archive`` wraps their datasets in ``EditorQuestions`` as LiveEdit's trainer does, and the
provenance record holds the choice as LiveEdit's holds its YAML key.

Why a separate validation file: EasyEdit's trainer keeps the checkpoint with the best validation loss, so
validating on the records the benchmark edits would leak the benchmark into model selection. Validation uses
the tail of the *train* file instead, which the training subset never reaches.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import importlib
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from .. import toyworld
from ..easyedit import LiveEditMultimodalTrainer, compat, distributed
from ..easyedit.hparams import PATH_KEYS, QUESTION_RENDERINGS
from ..easyedit.questions import EditorQuestions
from ..easyedit.validate import image_roots, validate_file
from ..liveedit import config as liveedit_config
from ..toyworld.artifacts import git_commit

LOG = logging.getLogger(__name__)

# method -> (editing hparams class, training hparams class or None), as attribute names of `easyeditor`
# (LiveEdit's classes are exported there by `import easyedit_liveedit`). IKE needs no training.
HPARAMS_CLASSES: dict[str, tuple[str, str | None]] = {
    "LiveEdit": ("LiveEditMultimodalHparams", "LiveEditMultimodalTrainingHparams"),
    "MEND": ("MENDMultimodalHparams", "MENDMultimodalTrainingHparams"),
    "SERAC": ("SERACMultimodalHparams", "SERACMultimodalTrainingHparams"),
    "IKE": ("IKEMultimodalHyperParams", None),
    # EasyEdit main only (the wheel has neither); their YAMLs go through the class's own from_hparams (act_margin)
    "WISE": ("WISEMultimodalHyperParams", None),
    "GRACE": ("GraceHyperParams", None),
}
_OWN_LOADER = ("WISE", "GRACE")


def unavailable(method: str) -> str | None:
    """Why the installed easyeditor cannot run ``method``'s multimodal editor; None if it can."""
    class_name = HPARAMS_CLASSES[method][0]
    if not hasattr(importlib.import_module("easyeditor"), class_name):
        return f"the installed easyeditor has no {class_name} (EasyEdit main has; the PyPI wheel 0.0.1.dev0 has not)"
    return None


def baseline_questions(method: str, questions: str) -> str | None:
    """How EasyEdit's own trainer of ``method`` renders training questions (``method.questions``): ``"editor"``, or
    None for its dataset's template. Raises ``ValueError`` for LiveEdit (its YAML key decides) or another value."""
    if method not in ("MEND", "SERAC"):
        raise ValueError(f"method.questions is for EasyEdit's own trainers (MEND, SERAC); {method} "
                         + ("takes it from its training YAML's key 'questions'" if method == "LiveEdit" else
                            "does not meta-train"))  # fmt: skip
    if questions not in QUESTION_RENDERINGS:
        raise ValueError(f"method.questions is {questions!r}; expected one of {', '.join(QUESTION_RENDERINGS)}")
    return None if questions == "dataset" else questions


def _hparams_class(name: str) -> type:
    return getattr(importlib.import_module("easyeditor"), name)


def load_hparams(
    method: str, path: str | Path, overrides: dict[str, Any] | None = None, training: bool = False
) -> Any:
    """An EasyEdit hparams object for ``method`` from a YAML file, with ``overrides`` applied on top.

    Args:
        method: ``LiveEdit``, ``MEND``, ``SERAC``, ``IKE``, or EasyEdit main's ``WISE`` / ``GRACE``.
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
    if method in _OWN_LOADER:  # EasyEdit main's WISE / GRACE: the class's own loader, then the overrides
        loaded = cls.from_hparams(str(path))
        for key, value in (overrides or {}).items():
            setattr(loaded, key, value)
        return loaded
    if hasattr(cls, "from_dict"):  # this plugin's classes validate every key and type themselves
        return cls.from_dict(config, source=str(path))
    known = {f.name for f in dataclasses.fields(cls)}
    if not training:  # a YAML written for either EasyEdit target: `alg` beside `alg_name` or not
        config = compat.targets.fit_alg_key(config, known)
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


# Hparams that never change the trained weights: where outputs go, which YAML they came from, and how the expert
# library searches its keys at editing time (LiveEdit's ``index`` keys).
_OUTPUT_KEYS = ("results_dir", "source", *liveedit_config.names("index"))
# Files and folders the backbone is read from (LiveEdit's path keys minus data and archive), plus SERAC's
# counterfactual model and scope classifier; a hub name that is not on disk has no files to record, and its name is
# already in the hparams.
BACKBONE_KEYS = (
    *(key for key in PATH_KEYS if key not in ("coco_image", "rephrase_image", "archive")),
    "small_name",
    "cls_name",
)


def training_record(archive: str | Path) -> dict[str, Any]:
    """How an archive was trained (``<archive>.training.json``: seconds, steps, the command); {} if not recorded."""
    path = Path(archive).with_name(Path(archive).name + ".training.json")
    return json.loads(path.read_text()) if path.is_file() else {}


def provenance_path(archive: str | Path) -> Path:
    """Where an archive's provenance record lives: ``<archive>.provenance.json``, in the archive's folder."""
    archive = Path(archive)
    return archive.with_name(archive.name + ".provenance.json")


def _file_identity(path: Path) -> dict[str, dict[str, int]]:
    """Size and mtime of a file, or of each file directly in a folder, by file name.

    Size and mtime rather than a hash: hashing multi-GB backbone weights on every run would take minutes. A rebuilt
    or replaced file gets a new mtime; a copy that keeps both size and mtime would go unnoticed.
    """
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    identity = {}
    for file in files:
        stat = file.stat()
        identity[file.name] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return identity


def provenance(training_hparams: Any, train_json: str | Path, val_size: int) -> dict[str, Any]:
    """What an archive is trained from, so that a later run can tell whether the archive still fits its inputs.

    Args:
        training_hparams: the training hparams (a dataclass), as passed to ``train_archive``.
        train_json: the train split (validation records included).
        val_size: validation records held out from its end.

    Returns:
        ``{"hparams", "train_json_sha256", "val_size", "backbone"}``: the hparams minus those that never change the
        weights (``_OUTPUT_KEYS``); the backbone as ``{hparams key: {file name: {"size", "mtime_ns"}}}`` for each key
        whose path exists. JSON-safe: the record read back from its file equals a fresh one built from unchanged
        inputs.
    """
    values = {k: v for k, v in dataclasses.asdict(training_hparams).items() if k not in _OUTPUT_KEYS}
    if getattr(training_hparams, "questions", None) is not None:  # MEND's / SERAC's, set by the runner
        values["questions"] = training_hparams.questions
    with open(train_json, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    backbone = {}
    for key in BACKBONE_KEYS:
        value = getattr(training_hparams, key, None)
        if value and Path(value).exists():
            backbone[key] = _file_identity(Path(value))
    return {
        "hparams": json.loads(json.dumps(values, default=str)),  # as stored: tuples become lists, other types str
        "train_json_sha256": digest,
        "val_size": val_size,
        "backbone": backbone,
    }


def _differing(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Keys present on one side only or with different values, sorted."""
    return sorted(k for k in old.keys() | new.keys() if k not in old or k not in new or old[k] != new[k])


def provenance_changes(stored: dict[str, Any], fresh: dict[str, Any]) -> str | None:
    """The keys in which a stored provenance record differs from a fresh one, for the log; None if none does.

    Keys of ``hparams`` and ``backbone`` are named one level down (``hparams.lora_scale``, ``backbone.name``) so
    the log says which setting or file changed. A key present on one side only counts as a change (a new hparams
    field means the code that trains changed), except a ``LiveEditConfig`` field added since the record was written:
    that counts as its default, which is what the code computed before the field existed (as ``mismatches`` does).
    """
    hparams, fresh_hparams = stored.get("hparams"), fresh.get("hparams")
    if isinstance(hparams, dict) and isinstance(fresh_hparams, dict):
        added = {name: default for name, default in liveedit_config.field_defaults().items()
                 if name in fresh_hparams and name not in hparams}  # fmt: skip
        stored = {**stored, "hparams": {**added, **hparams}}
    changed = []
    for key in _differing(stored, fresh):
        old, new = stored.get(key), fresh.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changed += [f"{key}.{k}" for k in _differing(old, new)]
        else:
            changed.append(key)
    return ", ".join(changed) or None


def toy_world_of(hparams: Any, config: str | None = None) -> Any | None:
    """The toy world a YAML's ``name`` points at (``<cache>/toyworld/<config>/opt``, or the ``opt`` folder of any
    built world), or the one named ``config``, with the hparams' paths re-pointed at it (so
    ``EASYEDIT_LIVEEDIT_CACHE`` is honoured); None for any other backbone."""
    folder = Path(str(hparams.name)).parent
    cache = None  # the toy world cache (EASYEDIT_LIVEEDIT_CACHE or the project's .cache/toyworld)
    if config is None:
        if folder.name in toyworld.CONFIGS and folder.parent.name == "toyworld":
            config = folder.name
        elif folder.name in toyworld.CONFIGS and toyworld.Layout(folder).manifest.is_file():
            config, cache = folder.name, folder.parent  # a world built in a cache of another name
        else:
            return None
    world = toyworld.load(config, cache=cache, progress=False)
    world.apply_paths(hparams)
    return world


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


def _with_progress(trainer: Any, total: int, desc: str, disable: bool = False) -> tqdm:
    """A progress bar that advances with every EasyEdit ``train_step`` (EasyEdit's loop has none)."""
    bar = tqdm(total=total, desc=desc, unit="step", leave=False, disable=disable)
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
        The archive path (``<results_dir>/models/<alg>/<model>``); it exists when this returns, and so does its
        provenance record (``provenance_path``), which describes the inputs as they were when training started.
    """
    job = distributed.from_environment()  # under torchrun: one process of a DDP job (rank 0 writes the files)
    # every record checked before anything trains (EasyEdit's datasets fail with a bare KeyError or skip silently)
    validate_file(train_json, *image_roots(training_hparams), unique_edits=False)
    record = provenance(training_hparams, train_json, val_size)
    easyeditor = importlib.import_module("easyeditor")
    config = copy.deepcopy(training_hparams)
    config.final_eval = False  # the comparison evaluates the archive itself; EasyEdit saves at each validation
    config.debug = False  # EasyEdit skips saving when debug is set and save is not
    config.save = True
    # EasyEdit saves only at a validation, and its loop ends at step max_iters - 1: validate there at the latest
    config.val_interval = min(config.val_interval, max(config.max_iters - 1, 1))
    if job.is_main:
        split_train_val(Path(train_json), val_size, Path(work_dir))
    distributed.barrier(job)
    train_path, val_path = Path(work_dir) / "train.json", Path(work_dir) / "val.json"  # split_train_val's files
    # EasyEdit runs round(max_iters / (len(train_set) / batch_size)) epochs: never let that round to zero.
    size = min(len(json.loads(train_path.read_text())), config.max_iters * config.batch_size + 1)
    if method == "LiveEdit":
        trainer_class = LiveEditMultimodalTrainer  # renders questions as its YAML's key `questions` says
    else:
        trainer_class = easyeditor.MultimodalTrainer
    editor_questions = method != "LiveEdit" and getattr(config, "questions", None) == "editor"
    dataset = getattr(easyeditor, dataset_class)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if patches is not None:
            stack.enter_context(patches())
        stack.enter_context(compat.cuda_to_cpu())
        stack.enter_context(compat.baseline_fixes())  # EasyEdit's MEND/SERAC trainers need model_parallel
        train_set = dataset(str(train_path), config=config, size=size)
        val_set = dataset(str(val_path), config=config, size=min(val_size, max(config.val_steps, 1)))
        if editor_questions:  # EasyEdit's trainers read only a dataset's collate_fn and length
            train_set, val_set = EditorQuestions(train_set), EditorQuestions(val_set)
        trainer = trainer_class(config, train_set, val_set)
        bar = _with_progress(trainer, config.max_iters, f"train {method}", disable=not job.is_main)
        try:
            trainer.run()
        finally:
            bar.close()
    path = Path(trainer.save_path)
    if not path.is_file():
        raise FileNotFoundError(f"{method}: EasyEdit's trainer wrote no archive at {path}")
    seconds = getattr(trainer, "seconds_before", 0.0) + time.perf_counter() - started  # a resumed run: all its runs
    if job.is_main:
        provenance_path(path).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        how = {"seconds": round(seconds, 1), "steps": config.max_iters, "command": " ".join(sys.argv), **git_commit()}
        path.with_name(path.name + ".training.json").write_text(json.dumps(how, indent=1) + "\n")
    LOG.info("%s archive trained (%d steps, %.0f s): %s", method, config.max_iters, seconds, path)
    return path
