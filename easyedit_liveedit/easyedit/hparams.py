"""Editing and training hyper-parameters for LiveEdit, in EasyEdit's style (dataclass + ``from_hparams``).

They subclass EasyEdit's ``HyperParams`` and the method's own ``LiveEditConfig``, whose fields, defaults and validation
are theirs: its fields are YAML keys here (its ``training`` fields, the loss weights, do nothing in an editing file),
and ``liveedit_config()`` is the method's config alone.

EasyEdit keeps editing YAMLs in ``hparams/<ALG>/<model>.yaml`` (with ``alg_name:``) and training YAMLs in
``hparams/TRAINING/<ALG>/<model>.yaml`` (with ``alg:``); ours use the same model and path keys as EasyEdit's
MEND YAMLs, so a user switches method by changing the algorithm key. Unlike EasyEdit, a bad file is reported
as one ``ValueError``/``TypeError`` that names the key and the YAML file instead of a bare dataclass error.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
import yaml
from easyeditor.util.hparams import HyperParams

from ..index import check_index
from ..liveedit import LiveEditConfig
from .placement import check_precision

ALG_NAME = "LiveEdit"
SUPPORTED_MODELS = ("blip2", "minigpt4", "llava")
# EasyEdit main names its Hugging Face backbones by path or family, as its own YAMLs do: editing YAMLs give the
# model folder as `model_name` ("./hugging_cache/llava-onevision-qwen2-7b-ov-hf"), training YAMLs the family
# ("llava-onevision", "qwen2-vl-7b") with the folder in `name`.
CHAT_VLM_FAMILIES = {
    "llava-onevision": ("llava-onevision", "llava_onevision"),
    "qwen2-vl": ("qwen2-vl", "qwen2_vl", "qwen2vl"),
}
DTYPES = ("float32", "float16", "bfloat16")  # values of `dtype` ("torch." prefix accepted, as in EasyEdit's YAMLs)
QUESTION_RENDERINGS = ("editor", "dataset")  # values of the training key `questions`

# Keys holding files or folders the run reads; checked by `check_paths()` when a model or data set is built.
PATH_KEYS = (
    "name",
    "tokenizer_name",
    "qformer_checkpoint",
    "qformer_name_or_path",
    "state_dict_file",
    "pretrained_ckpt",
    "coco_image",
    "rephrase_image",
    "archive",
)

H = TypeVar("H", bound="_LiveEditHparamsBase")


@dataclass(kw_only=True)
class _LiveEditHparamsBase(LiveEditConfig, HyperParams):
    """Fields and validation shared by the editing and the training hparams (the method's: ``LiveEditConfig``)."""

    # Model: the same keys as EasyEdit's MEND YAMLs for these backbones.
    name: str
    model_name: str
    model_class: str
    tokenizer_class: str
    tokenizer_name: str
    device: int | str = 0
    # LLaVA: shard the backbone over the visible devices (device_map="auto"); LiveEdit's networks follow layer l_e
    model_parallel: bool = False

    # Precision EasyEdit main loads its Hugging Face backbones in (`torch_dtype=hparams.dtype`) and casts their
    # inputs to; a YAML string, a torch.dtype once loaded. None (blip2, minigpt4) leaves it to EasyEdit.
    dtype: str | torch.dtype | None = None
    archive: str | None = None  # a trained LiveEdit checkpoint (editing) / one to resume from (training)
    seed: int = 42

    # Multimodal backbone files, as in EasyEdit's YAMLs.
    qformer_checkpoint: str | None = None
    qformer_name_or_path: str | None = None
    state_dict_file: str | None = None
    pretrained_ckpt: str | None = None

    # Image folders: MMEdit image paths are relative to these.
    coco_image: str = "./"
    rephrase_image: str = "./"

    results_dir: str = "./results"

    ALG_KEY: ClassVar[str] = "alg_name"
    source: str | None = field(default=None, repr=False, compare=False)  # the YAML this came from

    def __post_init__(self) -> None:
        where = self.source or "<in code>"
        if getattr(self, self.ALG_KEY) != ALG_NAME:
            raise ValueError(
                f"{where}: key '{self.ALG_KEY}' is {getattr(self, self.ALG_KEY)!r}; expected {ALG_NAME!r}"
            )
        family = chat_vlm_family(self.model_name)
        if self.model_name not in SUPPORTED_MODELS and family is None:
            raise ValueError(
                f"{where}: key 'model_name' is {self.model_name!r}; supported: {', '.join(SUPPORTED_MODELS)}, or "
                f"a name or folder containing {' / '.join(CHAT_VLM_FAMILIES)} (EasyEdit main's Hugging Face backbones)"
            )
        if isinstance(self.dtype, str) or (self.dtype is None and family is not None):
            name = (self.dtype or "float32").removeprefix("torch.")
            if name not in DTYPES:
                raise ValueError(f"{where}: key 'dtype' is {self.dtype!r}; expected one of {', '.join(DTYPES)}")
            self.dtype = getattr(torch, name)  # EasyEdit main passes it to from_pretrained and to tensor.to()
        try:  # the method's own config checks the method's keys
            super().__post_init__()
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        check_index(self, where)  # index: faiss needs faiss, said now rather than at the first edit

    @classmethod
    def from_hparams(cls: type[H], hparams_name_or_path: str | os.PathLike) -> H:
        """Load and validate a YAML file (``.yaml`` may be omitted, as in EasyEdit)."""
        path = Path(hparams_name_or_path)
        if path.suffix not in (".yaml", ".yml"):
            path = path.with_name(path.name + ".yaml")
        if not path.is_file():
            raise FileNotFoundError(f"hparams file not found: {path}")
        with open(path) as stream:
            config = yaml.safe_load(stream)
        if not isinstance(config, dict):
            raise ValueError(f"{path}: expected a mapping of keys to values, got {type(config).__name__}")
        return cls.from_dict(config, source=str(path))

    @classmethod
    def from_dict(cls: type[H], config: dict[str, Any], source: str = "<dict>") -> H:
        """Build from a mapping, checking every key and type; errors name the key and ``source``."""
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name != "source"}
        unknown = sorted(set(config) - set(fields))
        if unknown:
            raise TypeError(f"{source}: unknown key(s) {', '.join(map(repr, unknown))} for {cls.__name__}")
        required = [name for name, f in fields.items() if _is_required(f)]
        missing = [name for name in required if name not in config]
        if missing:
            raise ValueError(f"{source}: missing required key(s) {', '.join(map(repr, missing))}")
        values = {key: _coerce(key, value, hints[key], source) for key, value in config.items()}
        return cls(**values, source=source)

    def check_paths(self, keys: tuple[str, ...] = PATH_KEYS) -> None:
        """Raise ``FileNotFoundError`` naming the key and YAML file for the first path that does not exist."""
        for key in keys:
            value = getattr(self, key, None)
            if value is not None and not Path(value).exists():
                raise FileNotFoundError(
                    f"{self.source or '<in code>'}: key {key!r} points to {value!r}, which does not exist"
                )


def chat_vlm_family(model_name: str) -> str | None:
    """The family of one of EasyEdit main's Hugging Face backbones named by ``model_name``; None for any other."""
    name = str(model_name).lower()
    return next((family for family, aliases in CHAT_VLM_FAMILIES.items() if any(a in name for a in aliases)), None)


def _is_required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _coerce(key: str, value: Any, hint: Any, source: str) -> Any:
    """Check ``value`` against the field's type; accept YAML's strings for scientific notation in floats."""
    options = (
        typing.get_args(hint)
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        else (hint,)
    )
    if value is None:
        if type(None) in options:
            return None
        raise TypeError(f"{source}: key {key!r} must not be null")
    for option in options:
        if option is Any:
            return value
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is float and isinstance(value, str):
            try:
                return float(value)  # PyYAML reads `1e-4` (no dot) as a string, as EasyEdit notes
            except ValueError:
                continue
        if option is int and isinstance(value, bool):
            continue
        origin = typing.get_origin(option) or option
        if origin is list and isinstance(value, list):
            (item_type,) = typing.get_args(option) or (Any,)
            return [_coerce(f"{key}[{i}]", v, item_type, source) for i, v in enumerate(value)]
        if origin is not list and option is not type(None) and isinstance(value, origin):
            return value
    expected = " or ".join(getattr(o, "__name__", str(o)) for o in options if o is not type(None))
    raise TypeError(f"{source}: key {key!r} must be {expected}, got {type(value).__name__} {value!r}")


@dataclass(kw_only=True)
class LiveEditMultimodalHparams(_LiveEditHparamsBase):
    """Editing hparams: ``hparams/LiveEdit/<model>.yaml``, loaded by EasyEdit's ``MultimodalEditor``."""

    alg_name: str
    batch_size: int = 1  # MultimodalEditor.edit sets it to 1 (one edit per call)
    max_length: int = 30
    # ours: a library folder (created if missing) holding the experts across runs; each edit is committed to it
    # durably before the call returns; re-edits replace, the same edit again changes nothing (docs/library.md)
    library_path: str | None = None

    def check_paths(self, keys: tuple[str, ...] = PATH_KEYS) -> None:
        """As ``_LiveEditHparamsBase.check_paths``; also refuses a ``library_path`` that exists but is not a folder."""
        super().check_paths(keys)
        if self.library_path is not None and Path(self.library_path).exists() and not Path(self.library_path).is_dir():
            raise ValueError(
                f"{self.source or '<in code>'}: key 'library_path' points to {self.library_path!r}, which is a file; "
                "it must name a library folder (created if missing)"
            )


@dataclass(kw_only=True)
class LiveEditMultimodalTrainingHparams(_LiveEditHparamsBase):
    """Meta-training hparams: ``hparams/TRAINING/LiveEdit/<model>.yaml``, read by EasyEdit's trainer loop."""

    alg: str
    ALG_KEY: ClassVar[str] = "alg"

    # Optimisation (the authors: Adam, lr 1e-4, x0.1 after 10,000 steps, every loss weighted 1).
    lr: float = 1e-4
    opt: str = "Adam"
    lr_decay_steps: int | None = 10000  # the learning rate is multiplied by lr_decay_rate after this many steps
    lr_decay_rate: float = 0.1
    grad_clip: float = 100.0
    # ours: "editor" renders training questions as MultimodalEditor renders edits (questions.py); "dataset" keeps
    # the dataset's own rendering (VQADataset's template), as EasyEdit's trainers do
    questions: str = "editor"
    # autocast of meta-training steps: fp32 (none), bf16 or fp16; LiveEdit's weights stay fp32 (easyedit/placement.py)
    precision: str = "fp32"

    # EasyEdit's training loop (BaseTrainer / MultimodalTrainer) reads these.
    batch_size: int = 8
    val_batch_size: int = 8
    accumulate_bs: int = 1
    max_iters: int | None = 20000
    max_epochs: int | None = None
    log_interval: int = 100
    eval_log_interval: int = 1000
    val_interval: int = 1000
    val_steps: int = 500
    early_stop_patience: int = 20000
    early_stop_key: str = "loss/total_edit_val"
    model_save_pt: int = 5000
    train_base: bool = False  # the backbone stays frozen: LiveEdit never trains it
    # Read by EasyEdit's `get_model`: LiveEdit changes no backbone weight and keeps the backbone's dropout as is.
    inner_params: list[str] = field(default_factory=list)
    dropout: float | None = None
    no_grad_layers: int | None = None
    # Read by EasyEdit main: `get_model` passes `freeze_qformer` to Blip2OPT / MiniGPT4 (LiveEdit keeps the whole
    # backbone frozen), and its `EditableModel` reads `exact_match`.
    freeze_qformer: bool = True
    exact_match: bool = False
    eval_only: bool = False
    final_eval: bool = True
    half: bool = False
    debug: bool = False
    save: bool = True
    silent: bool = False
    verbose: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.questions not in QUESTION_RENDERINGS:
            raise ValueError(
                f"{self.source or '<in code>'}: key 'questions' is {self.questions!r}; "
                f"expected one of {', '.join(QUESTION_RENDERINGS)}"
            )
        if self.questions == "editor" and chat_vlm_family(self.model_name) is not None:
            raise ValueError(
                f"{self.source or '<in code>'}: key 'questions' must be 'dataset' for {self.model_name!r}: EasyEdit "
                "main's datasets already render its Hugging Face backbones' questions with the processor's chat "
                "template, as its editor renders edits"
            )
        check_precision(self.precision, self.source or "<in code>")
        if self.lr_decay_steps is not None and self.lr_decay_steps < 1:
            raise ValueError(f"{self.source or '<in code>'}: key 'lr_decay_steps' must be >= 1 or null")
        if not 0 < self.lr_decay_rate <= 1:
            raise ValueError(f"{self.source or '<in code>'}: key 'lr_decay_rate' must be in (0, 1]")
        if self.train_base:
            raise ValueError(
                f"{self.source or '<in code>'}: key 'train_base' must be false: LiveEdit keeps the backbone frozen"
            )
