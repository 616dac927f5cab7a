"""What each command of the command line does, given the composed Hydra configuration.

The CLI (``cli.py``) parses and validates; this module turns the configuration into the objects the comparison
runner takes (``compare.MethodRun``, ``compare.Backbone``, ``compare.CompareSettings``), runs the command and
writes its files into the run directory. Relative paths in the configuration are read from the working
directory when they exist there, else from the project root (so the commands work from anywhere in a checkout).

With ``run.workers`` > 1, ``compare`` runs each method as its own ``edit`` run in a worker process
(``<run dir>/methods/<method>/``: its log, progress bars, table and plot), ``run.workers`` at a time.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import json
import logging
import os
import random
import re
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import OmegaConf

from .. import toyworld
from ..easyedit import MultimodalEditor, compat
from ..easyedit.placement import hparams_device
from ..easyedit.validate import image_roots, validate_file
from ..toyworld.evaluate import ImageLoader
from ..toyworld.layout import CACHE_ENV, PROJECT_ROOT
from . import archives, ike_offline, nan_guard, shipped
from .config import label, method_config
from .emt_probe import load_records
from .engine import Backbone, CompareSettings, MethodRun, Row, compare, seed_all
from .plots import plot
from .processes import compare_in_processes
from .quiet import quiet
from .table import markdown, write_csv

LOG = logging.getLogger(__name__)

_DATASETS = {"vqa": "VQADataset", "caption": "CaptionDataset"}


def project_path(path: str | Path) -> Path:
    """``path`` as given if it exists (or is absolute), else relative to the project root."""
    path = Path(path)
    return path if path.is_absolute() or path.exists() else PROJECT_ROOT / path


class Runner:
    """The commands, sharing one toy world / backbone description per run."""

    def __init__(self, cfg: Any, out: Path) -> None:
        self.cfg = cfg
        self.out = Path(out)
        if cfg.data.kind not in _DATASETS:
            raise ValueError(f"data.kind={cfg.data.kind!r}: expected one of {sorted(_DATASETS)}")
        self.world = self._world()
        self.rows: list[Row] = []  # the last table, for callers that want the rows rather than the text
        self._validated: set[tuple[Path, tuple]] = set()  # (user data file, image folders) checked in this run
        torch.set_num_threads(cfg.run.threads)

    # ------------------------------------------------------------------------------------------ setup
    def _world(self) -> Any:
        if self.cfg.model.toy_world is None:
            return None
        return toyworld.load(self.cfg.model.toy_world, progress=self.cfg.run.progress)

    def _data_path(self, key: str, toy_split: str) -> Path | None:
        value = self.cfg.data.get(key)
        if value is not None:
            return project_path(value)
        if self.world is not None:
            return self.world.split(toy_split)
        return None

    def data_paths(self) -> tuple[Path, Path, Path | None]:
        """``(train_json, eval_json, classification_json)`` of the configured data."""
        kind = self.cfg.data.kind
        train = self._data_path("train_json", f"{kind}_train")
        evaluation = self._data_path("eval_json", f"{kind}_eval")
        if train is None or evaluation is None:
            raise ValueError(f"data={self.cfg.data.name}: set data.train_json and data.eval_json for a real backbone")
        return train, evaluation, self._data_path("classification_json", "classification")

    def _validate_user_files(self, hparams: Any) -> None:
        """Check the MMEdit files a user gave (the toy world's own are checked when it is built) before anything
        trains or edits, against the image folders ``hparams`` read them from: an error names the file, the record
        and the field. Each file is checked once per run and image folder."""
        roots = image_roots(hparams)
        for key in ("train_json", "eval_json"):
            if self.cfg.data.get(key) is None:
                continue
            path = project_path(self.cfg.data[key])
            if (path, roots) not in self._validated:
                validate_file(path, *roots)
                self._validated.add((path, roots))

    def backbone(self) -> Backbone:
        """How to build a fresh backbone: the toy world's, or EasyEdit's ``MultimodalEditor`` constructor."""
        if self.world is not None:
            world = self.world
            loader = ImageLoader(world.layout.images, world.config.image_size)
            return Backbone(load=lambda h: (world.load_model().to(hparams_device(h)), world.tokenizer()),
                            patches=world.easyedit_patches, load_image=loader)  # fmt: skip

        def load(hparams: Any) -> tuple[Any, Any]:
            editor = MultimodalEditor(hparams)
            return editor.model.eval(), editor.tok

        def load_image(relative: str) -> torch.Tensor:
            processors = importlib.import_module("easyeditor.dataset.processor.blip_processors")
            processor = processors.BlipImageEvalProcessor(image_size=364, mean=None, std=None)
            image_root = Path(self.cfg.data.get("image_root") or ".")
            return compat.targets.process_image(processor, image_root / relative)

        return Backbone(load=load, patches=contextlib.nullcontext, load_image=load_image)

    def settings(self, score: bool = True) -> CompareSettings:
        _, evaluation, classification = self.data_paths()
        eval_records = json.loads(evaluation.read_text())
        available, wanted = len(eval_records), max(self.cfg.run.edits)
        if available < wanted:  # fail before any training, not as an error row after it
            raise ValueError(
                f"data={self.cfg.data.name}: {evaluation} holds {available} records, but run.edits asks for {wanted}"
            )
        if self.cfg.run.order_seed is not None:  # another edit order: the whole file shuffled, kept with the run
            random.Random(self.cfg.run.order_seed).shuffle(eval_records)
            evaluation = self.out / f"{evaluation.stem}.order{self.cfg.run.order_seed}.json"
            evaluation.parent.mkdir(parents=True, exist_ok=True)
            evaluation.write_text(json.dumps(eval_records, indent=1) + "\n")
        records = None
        if classification is not None and classification.is_file():
            records = load_records(classification, self.cfg.run.probe_limit)
        return CompareSettings(
            eval_json=str(evaluation),
            dataset_class=_DATASETS[self.cfg.data.kind],
            edits=list(self.cfg.run.edits),
            classification_records=records,
            score=score,
            seed=self.cfg.run.seed,
            protocol=self.cfg.run.protocol,
        )

    def method_run(self, method_cfg: Any, force_train: bool | None = None) -> MethodRun:
        """A ``MethodRun`` for one method config: hparams loaded, archive trained on demand, or why it cannot run."""
        name, row = method_cfg.name, label(method_cfg)
        editing_yaml = project_path(method_cfg.hparams)
        if not editing_yaml.is_file():
            reason = f"no {method_cfg.hparams}"
            if method_cfg.requires:
                reason += f"; {name} needs {method_cfg.requires}, not available offline here"
            return MethodRun(row, not_run=reason)
        missing = archives.unavailable(name)
        if missing is not None:
            return MethodRun(row, not_run=missing)
        hparams = archives.load_hparams(name, editing_yaml, dict(method_cfg.overrides))
        questions = None if method_cfg.questions is None else archives.baseline_questions(name, method_cfg.questions)
        if not hasattr(hparams, "model_parallel"):
            # MEND.__init__ reads it; the wheel's editing hparams lack it (compat section 5 covers training only).
            hparams.model_parallel = False
        if self.world is not None:
            self.world.apply_paths(hparams)
        self._validate_user_files(hparams)
        retrain = self.cfg.run.retrain if force_train is None else force_train
        if hparams.alg_name == "IKE":
            return self._ike_run(row, hparams, retrain)
        if method_cfg.training_hparams is None:
            return MethodRun(row, hparams=hparams)
        training = archives.load_hparams(
            name, project_path(method_cfg.training_hparams), dict(method_cfg.training_overrides), training=True
        )
        if self.world is not None:
            self.world.apply_paths(training)
        training.results_dir = str(project_path(self.cfg.run.archive_dir) / (method_cfg.label or ""))
        if questions is not None:  # EasyEdit's own trainers: the attribute archives.train_archive reads
            training.questions = questions
        if self.cfg.run.train_steps is not None:
            training.max_iters = self.cfg.run.train_steps
        archive = project_path(method_cfg.archive) if method_cfg.archive else archives.archive_path(training)
        hparams.archive = str(archive)
        train_json, _, _ = self.data_paths()

        def prepare() -> None:
            if method_cfg.archive:  # the user's own archive: used as given, never checked or retrained
                if not archive.is_file():
                    raise FileNotFoundError(f"method.archive={method_cfg.archive!r} does not exist")
                LOG.info("%s: using the archive %s (method.archive, used as given)", row, archive)
                return
            if archive.is_file() and not retrain and self._archive_fits(row, archive, training, train_json):
                return
            if not retrain and self.world is not None:  # an archive shipped in the repository, if it fits
                source = shipped.folder(self.world.config.name)
                if shipped.unpack(row, training, train_json, self.cfg.run.val_size, archive, source):
                    return
            patches = self.world.easyedit_patches if self.world is not None else compat.cuda_to_cpu
            written = archives.train_archive(name, training, train_json, _DATASETS[self.cfg.data.kind],
                                             self.out / "training" / row, patches, self.cfg.run.val_size)  # fmt: skip
            if written != archive:
                raise RuntimeError(f"{row}: the trainer wrote {written}, expected {archive}")

        return MethodRun(row, hparams=hparams, prepare=prepare, training=training, train_json=train_json)

    def _archive_fits(self, name: str, archive: Path, training: Any, train_json: Path) -> bool:
        """Whether an existing archive may be reused: its provenance record matches what it would be trained from
        now. An archive without a record (trained before records were kept) is reused with a warning."""
        record = archives.provenance_path(archive)
        if not record.is_file():
            LOG.warning(
                "%s: the archive %s has no provenance record, so whether it fits the current hparams, data and "
                "backbone cannot be checked; using it (pass run.retrain=true to train it again)",
                name,
                archive,
            )
            return True
        fresh = archives.provenance(training, train_json, self.cfg.run.val_size)
        changes = archives.provenance_changes(json.loads(record.read_text()), fresh)
        if changes is None:
            LOG.info("%s: using the archive %s", name, archive)
            return True
        LOG.warning(
            "%s: the archive %s was trained from other inputs (changed: %s); a shipped archive that fits, or a new "
            "training, replaces it",
            name,
            archive,
            changes,
        )
        return False

    def _ike_run(self, name: str, hparams: Any, rebuild: bool) -> MethodRun:
        """IKE: its encoder resolved offline, its demonstrations built from the train split when missing.

        The demonstrations file lives with the run's archives (``<run.archive_dir>/IKE/embedding/``), named by
        the data kind, so a caption run never retrieves VQA demonstrations. EasyEdit's IKE entry requires the
        train dataset (``train_ds``) as MultimodalEditor does; it is loaded once, in ``prepare``.
        """
        hparams.sentence_model_name = ike_offline.resolve_sentence_model(hparams.sentence_model_name)
        hparams.results_dir = str(project_path(self.cfg.run.archive_dir))
        hparams.task_name = self.cfg.data.kind
        train_json, _, _ = self.data_paths()
        loaded: dict[str, Any] = {}

        def prepare() -> None:
            patches = self.world.easyedit_patches if self.world is not None else contextlib.nullcontext
            dataset = getattr(importlib.import_module("easyeditor"), _DATASETS[self.cfg.data.kind])
            with patches():
                loaded["train_ds"] = dataset(str(train_json), config=hparams)
            path = ike_offline.demonstrations_path(hparams)
            if path.is_file() and not rebuild:
                LOG.info("%s: using the demonstrations %s", name, path)
                return
            ike_offline.write_demonstrations(
                hparams, itertools.islice(loaded["train_ds"], self.cfg.run.ike_train_records)
            )

        return MethodRun(name, hparams=hparams, prepare=prepare, edit_kwargs=lambda: dict(loaded))

    def _methods(self, names: list[str]) -> list[MethodRun]:
        return [self.method_run(method_config(self.cfg, name)) for name in names]

    def _compare_in_workers(self, names: list[str], settings: CompareSettings, report: Any) -> list[Row]:
        """``compare`` with one process per method, ``run.workers`` at a time (in ``names`` order)."""
        for name in names:  # an unknown name fails here, before any process starts
            method_config(self.cfg, name)
        config = OmegaConf.to_container(self.cfg, resolve=True)
        toy_cache = str(self.world.layout.root.parent) if self.world is not None else None  # the world loaded here
        folder = self.out / "methods"
        jobs = [(name, method_rows, (config, name, str(folder / name), toy_cache)) for name in names]
        LOG.info("compare: %d methods, %d at a time; each logs to %s/<method>/", len(names), self.cfg.run.workers,
                 folder)  # fmt: skip
        return compare_in_processes(jobs, settings.edits, self.cfg.run.workers, self.cfg.run.progress, report,
                                    status=lambda name: last_progress(folder / name / "progress.log"))  # fmt: skip

    # ---------------------------------------------------------------------------------------- commands
    def _report(self, rows: list[Row], title: str) -> str:
        self.rows = rows
        text = markdown(rows)
        (self.out / "table.md").write_text(f"# {title}\n\n{text}")
        write_csv(rows, self.out / "table.csv")
        dump(rows, self.out / "rows.json")
        plot(rows, self.out / "plot.png", title=title)
        return text

    def _title(self, what: str) -> str:
        """What a table or plot shows: the backbone, the world or data, and how long the archives were trained."""
        c = self.cfg
        world = f" (toy world {c.model.toy_world!r})" if c.model.get("toy_world") else ""
        steps = "each training YAML's max_iters" if c.run.train_steps is None else f"{c.run.train_steps} steps"
        edits = list(c.run.edits)
        order = "" if c.run.order_seed is None else f", edit order {c.run.order_seed}"
        return (f"{what}: model={c.model.name}{world} data={c.data.name} edits={edits} ({c.run.protocol}{order}), "
                f"archives trained {steps}")  # fmt: skip

    def train(self) -> str:
        """Meta-train the selected method's archive (again, if it exists; one given as ``method.archive`` is used as
        it is); for IKE, encode its demonstrations again. Returns where the result is."""
        run = self.method_run(self.cfg.method, force_train=True)
        if run.not_run:
            raise RuntimeError(f"{run.name} cannot be trained here: {run.not_run}")
        if run.prepare is None:
            return f"{run.name} needs no training"
        run.prepare()
        if run.hparams.alg_name == "IKE":  # IKE's "training" is encoding its demonstrations
            return f"{run.name} demonstrations: {ike_offline.demonstrations_path(run.hparams)}"
        (self.out / "archive.txt").write_text(f"{run.hparams.archive}\n")
        return f"{run.name} archive: {run.hparams.archive}"

    def ship(self) -> str:
        """Put the trained archive of every method of ``run.methods`` that trains into the repository
        (``artifacts/<toy world>/archives``, ``shipped.py``), training those missing (all of them with
        ``run.retrain=true``). Returns the manifest's path."""
        if self.world is None:
            raise ValueError("ship: only the toy worlds' archives ship with the repository (model=toy*)")
        dest = shipped.folder(self.world.config.name)
        command = "easyedit-liveedit " + " ".join(sys.argv[1:])
        for run in self._methods(list(self.cfg.run.methods)):
            if run.not_run or run.training is None:
                LOG.info("%s: nothing to ship (%s)", run.name, run.not_run or "no training")
                continue
            run.prepare()
            shipped.ship(run.name, Path(run.hparams.archive), run.training, run.train_json, self.cfg.run.val_size,
                         dest, command)  # fmt: skip
        return f"shipped archives: {dest / 'MANIFEST.json'}"

    def edit(self) -> str:
        """The selected method's lifelong sequence, scored after each of ``run.edits``."""
        rows = compare(self._methods([label(self.cfg.method)]), self.backbone(), self.settings(),
                       threads=self.cfg.run.threads, progress=self.cfg.run.progress)  # fmt: skip
        return self._report(rows, self._title(f"edit {label(self.cfg.method)}"))

    def compare(self) -> str:
        """Every method of ``run.methods`` on the same sequence (side by side with ``run.workers`` > 1)."""
        title = self._title("compare")
        methods = list(self.cfg.run.methods)
        repeated = sorted({name for name in methods if methods.count(name) > 1})
        if repeated:  # each method has one row per edit count and one folder
            raise ValueError(f"run.methods={methods}: {', '.join(repeated)} given more than once")
        settings = self.settings()

        def report(done: list[Row]) -> None:
            self._report(done, title + " (partial)")

        if self.cfg.run.workers > 1 and len(methods) > 1:
            rows = self._compare_in_workers(methods, settings, report)
        else:
            rows = compare(self._methods(methods), self.backbone(), settings,
                           threads=self.cfg.run.threads, progress=self.cfg.run.progress,
                           on_method_done=report)  # fmt: skip
        return self._report(rows, title)

    def probe(self) -> str:
        """The EMT probe only: classification accuracy before and after each of ``run.edits`` edits."""
        settings = self.settings(score=False)
        if not settings.classification_records:
            raise ValueError(f"data={self.cfg.data.name}: no classification records (data.classification_json)")
        rows = compare(self._methods([label(self.cfg.method)]), self.backbone(), settings,
                       threads=self.cfg.run.threads, progress=self.cfg.run.progress)  # fmt: skip
        return self._report(rows, self._title(f"EMT probe {label(self.cfg.method)}"))

    def diagnose(self) -> str:
        """The NaN guard on EasyEdit's MEND (and LiveEdit on the same sequence), with this run's archives."""
        d = self.cfg.diagnose
        _, evaluation, _ = self.data_paths()
        mend = self.method_run(method_config(self.cfg, "MEND"))
        if mend.not_run:
            raise RuntimeError(f"MEND cannot run here: {mend.not_run}")
        mend.prepare()
        argv = ["--hparams", str(self._yaml_copy(mend.hparams, "mend.yaml")), "--archive", mend.hparams.archive,
                "--data", str(evaluation), "--edits", str(d.edits), "--out", str(self.out), "--mode", d.mode,
                "--precision", d.precision, "--edit-lr-scale", str(d.edit_lr_scale),
                "--threads", str(self.cfg.run.threads)]  # fmt: skip
        if d.with_liveedit:
            live = self.method_run(method_config(self.cfg, "LiveEdit"))
            if live.not_run is None:
                live.prepare()
                argv += ["--liveedit-hparams", str(self._yaml_copy(live.hparams, "liveedit.yaml"))]
        LOG.info("nan_guard %s", " ".join(argv))
        status = nan_guard.main(argv)
        return f"nan_guard exit status {status}"

    def _yaml_copy(self, hparams: Any, name: str) -> Path:
        """The hparams as a YAML file in the run directory (toy-world paths and archive already applied)."""
        values = {f.name: getattr(hparams, f.name) for f in fields(hparams) if f.name != "source"}
        path = self.out / name
        path.write_text(yaml.safe_dump(values, sort_keys=False))
        return path


_BAR = re.compile(r"(?P<what>[^\r\n|]*?):\s*(?P<percent>\d+%)\|[^|]*\|\s*(?P<count>\d+/\d+)")


def last_progress(log: Path) -> str:
    """The newest progress bar in a worker's ``progress.log``, in a few words (``train LiveEdit 15% 443/3000``)."""
    try:
        with log.open("rb") as f:
            f.seek(max(f.seek(0, 2) - 4000, 0))
            tail = f.read().decode(errors="ignore")
    except FileNotFoundError:
        return "starting"
    bars = list(_BAR.finditer(tail))
    if not bars:
        return "starting"
    last = bars[-1]
    return f"{last['what'].strip()} {last['percent']} {last['count']}"


def method_rows(config: dict, name: str, out: str, toy_cache: str | None = None) -> list[Row]:
    """One method of a ``compare`` with ``run.workers`` > 1: its ``edit`` run, in a worker process, on the toy world
    found in ``toy_cache`` (the cache folder the parent loaded it from) if the backbone is the toy.

    The log goes to ``<out>/easyedit-liveedit.log`` (warnings also to the terminal, named by method), the progress
    bars to ``<out>/progress.log``; the table and plot of this method alone to ``<out>/``.
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    # Everything this process writes to stderr (tqdm's bars, library warnings) goes to progress.log, since two
    # processes' bars would garble one terminal; this log's warnings still reach the terminal, named by method.
    terminal = logging.StreamHandler(os.fdopen(os.dup(2), "w", buffering=1))
    terminal.setLevel(logging.WARNING)
    terminal.setFormatter(logging.Formatter(f"[{name}][%(levelname)s] %(message)s"))
    progress = (folder / "progress.log").open("w", buffering=1)
    os.dup2(progress.fileno(), 2)
    sys.stderr = progress
    logfile = logging.FileHandler(folder / "easyedit-liveedit.log")
    logfile.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[logfile, terminal], force=True)
    quiet(config["run"]["verbose"])

    if toy_cache is not None:
        os.environ[CACHE_ENV] = toy_cache
    cfg = OmegaConf.create(config)
    cfg.method = method_config(cfg, name)
    cfg.command = "edit"
    runner, _ = run(cfg, folder)
    return runner.rows


def run(cfg: Any, out: Path) -> tuple[Runner, str]:
    """Run ``cfg.command`` into ``out`` as the command line does: the resolved configuration written beside its
    results, every generator seeded with ``run.seed``. Returns the runner and the command's text result."""
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    seed_all(cfg.run.seed)
    runner = Runner(cfg, out)
    return runner, getattr(runner, cfg.command)()


def dump(rows: list[Any], path: Path) -> Path:
    """Rows as JSON (for scripts; the table files are for reading)."""
    path.write_text(json.dumps([asdict(r) for r in rows], indent=1, default=float))
    return path
