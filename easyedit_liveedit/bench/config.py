"""Structured configuration of the command line (Hydra): one dataclass schema per config group.

``register_configs()`` stores the schemas in Hydra's ``ConfigStore``; the YAML files under
``easyedit_liveedit/bench/conf/<group>/`` fill them. Because the top-level schema types every group, Hydra rejects an
unknown key or a value of the wrong type in a YAML file or an override (``run.edits=[ten]``) before any work
starts, with a message that names the key.

Groups:

* ``method``: an editor and its EasyEdit hparams YAMLs (``hparams/<ALG>/<model>.yaml`` for editing,
  ``hparams/TRAINING/<ALG>/<model>.yaml`` for meta-training), plus per-key overrides of those YAMLs; a variant of
  an editor (``MEND-tuned``: other YAMLs) is a config of its own, named by its ``label``.
* ``model``: a backbone (``toy``, ``toy_digits``, ``blip2``, ``minigpt4``, ``llava``): which hparams file name it
  uses and, for a toy backbone, which toy world to build or load.
* ``data``: the MMEdit records (toy E-VQA, toy E-IC, or MMEdit/VLKEB JSON files for real backbones).
* ``run``: edit counts, seed, output and archive folders, training length, threads (``default``, ``quick``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, OmegaConf

CONF_DIR = Path(__file__).resolve().parent / "conf"
COMMANDS = ("train", "edit", "compare", "diagnose", "probe", "ship")
# What `compare` runs by default: every editor, MEND and SERAC also with the settings tuned on the dev split. WISE and
# GRACE are EasyEdit main's multimodal editors (the PyPI wheel has none: their rows say so there).
COMPARED = ("LiveEdit", "MEND", "MEND-tuned", "SERAC", "SERAC-tuned", "IKE", "WISE", "GRACE")


@dataclass
class MethodConfig:
    """One editor, as EasyEdit knows it."""

    name: str = MISSING  # LiveEdit | MEND | SERAC | IKE | WISE | GRACE
    # a variant of a method (its own YAMLs, e.g. conf/method/MEND-tuned.yaml): the row's name, the config file's
    # name (run.methods=[MEND,MEND-tuned]) and the folder of its archives (<run.archive_dir>/<label>/models/...);
    # null: the method's name
    label: str | None = None
    hparams: str = MISSING  # editing YAML (relative paths are read from the project root)
    training_hparams: str | None = None  # training YAML; null for methods that need no training (IKE)
    archive: str | None = None  # an existing archive to use; null: <run.archive_dir>/models/<alg>/<model_name>
    overrides: dict[str, Any] = field(default_factory=dict)  # keys replaced in the editing YAML
    training_overrides: dict[str, Any] = field(default_factory=dict)  # keys replaced in the training YAML
    requires: str = ""  # what the method needs beyond this package, shown when it cannot run
    # how EasyEdit's own trainers (MEND, SERAC) render the training questions: null or dataset = the dataset's
    # template, as EasyEdit trains; editor = as MultimodalEditor renders edits (easyedit/questions.py). LiveEdit
    # takes it from its training YAML's key `questions`.
    questions: str | None = None


@dataclass
class ModelConfig:
    """A backbone."""

    name: str = MISSING  # toy (the scenes world) | toy_digits | blip2 | minigpt4 | llava
    hparams_name: str = MISSING  # the <model> of hparams/<ALG>/<model>.yaml
    toy_world: str | None = None  # a toyworld.CONFIGS name (scenes, scenes_small, digits, small); null: real backbone


@dataclass
class DataConfig:
    """MMEdit-format records: edits come from ``eval_json``, meta-training from ``train_json``."""

    name: str = MISSING
    kind: str = "vqa"  # vqa (EasyEdit's VQADataset) | caption (CaptionDataset)
    train_json: str | None = None  # null with the toy backbone: the toy world's <kind>_train split
    eval_json: str | None = None  # null with the toy backbone: the toy world's <kind>_eval split
    classification_json: str | None = None  # EMT probe records; null with the toy backbone: its own
    image_root: str | None = None  # folder the EMT probe's image paths are relative to (real backbones)


@dataclass
class RunConfig:
    """How long and where."""

    edits: list[int] = field(default_factory=lambda: [1, 10, 100, 1000])  # scored after each of these edits
    # cumulative: after T edits every one of the T is scored; immediate: each right after its own edit (EasyEdit
    # main's sequential_edit=True), the row after T being the mean of those T scores; chunked (the LiveEdit authors'):
    # every eval record, in chunks of T each edited from the unedited backbone, then scored (engine.py)
    protocol: str = "cumulative"
    methods: list[str] = field(default_factory=lambda: list(COMPARED))  # what `compare` runs: method labels
    seed: int = 0
    # null: the eval file's order; an integer: the eval records shuffled with it, written to the run folder (the
    # variance of a row over edit orders, BENCHMARKS.md)
    order_seed: int | None = None
    output_dir: str = "outputs"  # run folders go below it (Hydra's run directory)
    archive_dir: str = "results/${model.name}"  # trained archives: <archive_dir>/models/<alg>/<model_name>
    train_steps: int | None = None  # null: each training YAML's max_iters
    val_size: int = 100  # train records held out of meta-training; EasyEdit validates on min(val_size, val_steps)
    retrain: bool = False  # train even if the archive exists
    probe_limit: int | None = None  # EMT probe on the first N classification records (null: all)
    ike_train_records: int | None = None  # IKE draws demonstrations from the first N train records (null: all);
    # the file is cached in <archive_dir>/IKE/embedding/: after changing N, pass run.retrain=true
    threads: int = 2  # torch CPU threads (per process)
    workers: int = 1  # compare: methods run side by side, each in its own process (workers x threads <= cores)
    progress: bool = True  # tqdm bars
    verbose: bool = False  # true: show the third-party messages the command line hides (bench/quiet.py)


@dataclass
class DiagnoseConfig:
    """Arguments of the NaN-guard diagnostic (``python -m easyedit_liveedit.bench.nan_guard``)."""

    edits: int = 10
    mode: str = "train"  # MEND normaliser: train (EasyEdit's executor) | eval (trained statistics)
    precision: str = "fp16"  # fp16 (as EasyEdit runs BLIP-2) | fp32
    edit_lr_scale: float = 1.0
    with_liveedit: bool = True  # also run LiveEdit on the same sequence (needs its archive)


@dataclass
class AppConfig:
    """The whole configuration; ``command`` picks what runs."""

    command: str = "compare"  # train | edit | compare | diagnose | probe
    method: MethodConfig = MISSING
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    run: RunConfig = MISSING
    diagnose: DiagnoseConfig = field(default_factory=DiagnoseConfig)


def register_configs() -> None:
    """Store the schemas in Hydra's ConfigStore (idempotent: storing the same name again replaces it)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="base_config", node=AppConfig)
    store.store(group="method", name="base_method", node=MethodConfig)
    store.store(group="model", name="base_model", node=ModelConfig)
    store.store(group="data", name="base_data", node=DataConfig)
    store.store(group="run", name="base_run", node=RunConfig)


def label(method: Any) -> str:
    """A method config's row name: its ``label`` (a variant such as ``MEND-tuned``), else the method's name."""
    return method.label or method.name


def method_labels() -> list[str]:
    """Every method config shipped under ``conf/method/``: the methods and their variants."""
    return sorted(path.stem for path in (CONF_DIR / "method").glob("*.yaml"))


def method_config(cfg: Any, name: str) -> Any:
    """The method config labelled ``name``: the selected one (with its overrides) or ``conf/method/<name>.yaml``."""
    if name == label(cfg.method):
        return cfg.method
    path = CONF_DIR / "method" / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"run.methods: unknown method {name!r}; expected some of {', '.join(method_labels())}")
    node = OmegaConf.load(path)
    node.pop("defaults", None)
    root = cfg.copy()
    root.method = OmegaConf.merge(OmegaConf.structured(MethodConfig), node)  # validated like the selected one
    if label(root.method) != name:
        raise ValueError(f"{path}: its label is {label(root.method)!r}; a method file's label is its file name")
    return root.method
