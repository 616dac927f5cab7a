"""Every shim that lets easyeditor 0.0.1.dev0 (the PyPI wheel, written for torch 2.0 / transformers 4.30)
import and run on modern torch and transformers on a CPU-only machine, and run EasyEdit's SERAC and IKE editors
sequentially as their methods intend, at a usable speed (sections 10 to 12).

Each shim says which EasyEdit or transformers behaviour it covers, changes no algorithm or metric, and has
a test in ``tests/test_compat.py`` that fails if the shim stops working or stops being needed.
Nothing else in the project patches third-party code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import inspect
import logging
import sys
import warnings
import weakref
from collections.abc import Callable, Iterator
from types import ModuleType, SimpleNamespace
from typing import Any

import torch

LOG = logging.getLogger(__name__)

# --- 1. torchvision from PyPI next to the CPU torch ------------------------------------------------------
# PyPI's torchvision wheel is built against CUDA torch; beside torch's CPU build its C++ ops fail to load, and
# `torchvision._meta_registrations` then raises "operator torchvision::nms does not exist" at import. Because
# transformers and timm import torchvision whenever it is installed, that breaks easyeditor's import too.
# Declaring the two op schemas the meta registrations look up (nms, qnms) lets the import finish; calling
# these ops still fails loudly (nothing in EasyEdit's multimodal path calls them).
_TORCHVISION_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_torchvision_library: list[torch.library.Library] = []  # keeps the schema registration alive


def _declare_torchvision_ops() -> bool:
    """Import torchvision, declaring its missing op schemas first if the CPU/CUDA mismatch requires it.

    Returns True when the schemas had to be declared.
    """
    try:
        importlib.import_module("torchvision")
        return False
    except RuntimeError as error:
        if "torchvision::nms does not exist" not in str(error):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]  # drop the half-imported package before trying again
    if not _torchvision_library:
        library = torch.library.Library("torchvision", "FRAGMENT")
        for name, schema in _TORCHVISION_SCHEMAS.items():
            if not torch._C._dispatch_has_kernel(f"torchvision::{name}"):
                library.define(schema)
        _torchvision_library.append(library)
    importlib.import_module("torchvision")
    LOG.debug("declared torchvision::nms/qnms schemas so the CUDA torchvision wheel imports beside CPU torch")
    return True


# --- 2. Q-Former helpers that moved out of transformers.modeling_utils --------------------------------------
# EasyEdit's copied Q-Former (`trainer/blip2_models/Qformer.py`) imports `apply_chunking_to_forward`,
# `find_pruneable_heads_and_indices` and `prune_linear_layer` from `transformers.modeling_utils`; since
# transformers 4.4x they live only in `transformers.pytorch_utils`.
_MOVED_TO_PYTORCH_UTILS = ("apply_chunking_to_forward", "find_pruneable_heads_and_indices", "prune_linear_layer")


def _restore_moved_transformers_helpers() -> list[str]:
    """Re-export the moved helpers under their old module; returns the names that were missing."""
    import transformers.modeling_utils as modeling_utils
    import transformers.pytorch_utils as pytorch_utils

    missing = [name for name in _MOVED_TO_PYTORCH_UTILS if not hasattr(modeling_utils, name)]
    for name in missing:
        setattr(modeling_utils, name, getattr(pytorch_utils, name))
    return missing


# --- 3. `cuda:{device}` and `device: 0` hard-coded across the wheel ---------------------------------------
# `MultimodalEditor.__init__/edit`, the MEND/SERAC executors, `MEND.__init__`, `SERAC.__init__`, IKE and the
# evaluate helpers build `f"cuda:{hparams.device}"` whatever the hparams say; EasyEdit's YAMLs say `device: 0`,
# which reaches `tensor.to(0)` (`VQADataset.collate_fn`'s `dict_to`) and `module.to(0)` (`BaseTrainer`); the
# MEND/SERAC trainers call `.cuda()`. On a machine without CUDA these fail. In the wheel's multimodal paths the
# CUDA device only ever reaches torch through `Tensor.to`, `Module.to` and `.cuda()` (tensor factories take their
# device from a tensor), so while active, this context makes exactly those three keep everything on the CPU:
# any CUDA device (string, torch.device, or an integer index) becomes "cpu". It is a no-op when CUDA exists.
# Why not a TorchFunctionMode, which would also catch factories: every torch call then detours through Python,
# which doubled the time of SERAC's meta-training on the toy backbone (BENCHMARKS.md) and slowed editing alike.
def _is_cuda(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return isinstance(device, str) and device.startswith("cuda")


def _is_cuda_or_index(device: Any) -> bool:
    return _is_cuda(device) or (isinstance(device, int) and not isinstance(device, bool))


def _kept_on_cpu(to: Callable) -> Callable:
    """``to`` (``Tensor.to`` or ``Module.to``) with every CUDA device among its arguments replaced by the CPU."""

    @functools.wraps(to)
    def cpu_to(self: Any, *args: Any, **kwargs: Any) -> Any:
        args = tuple("cpu" if _is_cuda_or_index(a) else a for a in args)
        if _is_cuda_or_index(kwargs.get("device")):
            kwargs["device"] = "cpu"
        return to(self, *args, **kwargs)

    return cpu_to


def _stays_on_cpu(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return self  # tensor.cuda(device=None, non_blocking=False); Module.cuda() reaches it through _apply


_originals: dict[tuple[type, str], Any] = {}  # torch's own attributes while patched (None: inherited)
_cpu_depth = 0  # nested cuda_to_cpu() contexts: patched on the first entry, restored on the last exit


def _keep_on_cpu() -> None:
    replacements = {
        (torch.Tensor, "to"): _kept_on_cpu(torch.Tensor.to),
        (torch.Tensor, "cuda"): _stays_on_cpu,
        (torch.nn.Module, "to"): _kept_on_cpu(torch.nn.Module.to),
    }
    for (cls, name), replacement in replacements.items():
        _originals[cls, name] = cls.__dict__.get(name)
        setattr(cls, name, replacement)


def _restore_devices() -> None:
    for (cls, name), original in _originals.items():
        if original is None:
            delattr(cls, name)  # inherited (torch._C.TensorBase's)
        else:
            setattr(cls, name, original)
    _originals.clear()


@contextlib.contextmanager
def cuda_to_cpu() -> Iterator[None]:
    """Run EasyEdit code that hard-codes ``cuda:{device}`` or ``device: 0`` on the CPU when CUDA is unavailable."""
    global _cpu_depth
    if torch.cuda.is_available():
        yield
        return
    if _cpu_depth == 0:
        _keep_on_cpu()
    _cpu_depth += 1
    try:
        yield
    finally:
        _cpu_depth -= 1
        if _cpu_depth == 0:
            _restore_devices()


# --- 4. EasyEdit's hard-coded EVA ViT-g -------------------------------------------------------------------
# `Blip2Base.init_vision_encoder` always calls `create_eva_vit_g` (a 986M-parameter ViT) through its module
# global. Small backbones (the toy world, tests with tiny BLIP-2s) swap in their own builder for the duration
# of the model's construction; the builder takes the same keyword arguments and returns a module with a
# `num_features` attribute, as EVA's does.
@contextlib.contextmanager
def vision_tower_builder(builder: Callable[..., torch.nn.Module]) -> Iterator[None]:
    """Make EasyEdit's ``Blip2Base.init_vision_encoder`` build its vision tower with ``builder``."""
    blip2 = importlib.import_module("easyeditor.trainer.blip2_models.blip2")
    original = blip2.create_eva_vit_g
    blip2.create_eva_vit_g = builder
    try:
        yield
    finally:
        blip2.create_eva_vit_g = original


# --- 5. Training hparams that BaseTrainer reads but the wheel's dataclasses lack -----------------------------
# `BaseTrainer.__init__` and `MEND.__init__` read `config.model_parallel`, which
# `MENDMultimodalTrainingHparams` / `SERACMultimodalTrainingHparams` do not define (EasyEdit main added it).
_TRAINING_HPARAMS_NEEDING_MODEL_PARALLEL = ("MENDMultimodalTrainingHparams", "SERACMultimodalTrainingHparams")


def _default_model_parallel(training_hparams: ModuleType) -> list[str]:
    """Give the wheel's multimodal training hparams a ``model_parallel = False`` default; returns patched names."""
    patched = []
    for name in _TRAINING_HPARAMS_NEEDING_MODEL_PARALLEL:
        cls = getattr(training_hparams, name)
        if not hasattr(cls, "model_parallel"):
            cls.model_parallel = False
            patched.append(name)
    return patched


# --- 6. Subpackages shadowed by easyeditor's star imports -----------------------------------------------------
# `easyeditor/__init__` star-imports every method package; `easyeditor.models.ike` exports a module named
# `util`, which overwrites the attribute `easyeditor.util`. Then `import easyeditor.util.alg_dict as d` (the
# way users reach ALG_MULTIMODAL_DICT) fails with "cannot import name 'alg_dict' from
# 'easyeditor.models.ike.util'". Point the attribute back at the real subpackage.
def _unshadow_easyeditor_util() -> bool:
    """Re-bind ``easyeditor.util`` to the ``easyeditor.util`` package; returns True if it was shadowed."""
    easyeditor = sys.modules["easyeditor"]
    util = importlib.import_module("easyeditor.util")
    shadowed = easyeditor.util is not util
    easyeditor.util = util
    return shadowed


# --- 7. The 364-pixel image processor hard-coded in EasyEdit's multimodal datasets and editor -----------------
# `VQADataset.__init__`, `CaptionDataset.__init__` and `MultimodalEditor.__init__` each build
# `BlipImageEvalProcessor(image_size=364, ...)` through their module's global name, whatever the backbone's
# vision tower expects. Small backbones (the toy world) swap that name for a processor of their own size while
# those objects are constructed. The processor is EasyEdit's own class (same resize, tensor and normalisation);
# only the size differs.
_MODULES_WITH_IMAGE_PROCESSOR = (
    "easyeditor.dataset.vqa",
    "easyeditor.dataset.coco_caption",
    "easyeditor.editors.multimodal_editor",
)


@contextlib.contextmanager
def image_processor_size(size: int) -> Iterator[None]:
    """Make EasyEdit's datasets and ``MultimodalEditor`` build their image processor at ``size`` pixels."""
    if not isinstance(size, int) or size <= 0:
        raise ValueError(f"image_processor_size: size must be a positive int, got {size!r}")
    processors = importlib.import_module("easyeditor.dataset.processor.blip_processors")
    base = processors.BlipImageEvalProcessor

    class _SizedProcessor(base):
        def __init__(self, image_size: int = size, mean: Any = None, std: Any = None) -> None:
            super().__init__(image_size=size, mean=mean, std=std)

    modules = [importlib.import_module(name) for name in _MODULES_WITH_IMAGE_PROCESSOR]
    originals = [module.BlipImageEvalProcessor for module in modules]
    for module in modules:
        module.BlipImageEvalProcessor = _SizedProcessor
    try:
        yield
    finally:
        for module, original in zip(modules, originals, strict=True):
            module.BlipImageEvalProcessor = original


# --- 8. The BLIP-2 checkpoint that the wheel's Blip2OPT never loads -------------------------------------------
# EasyEdit's `Blip2OPT.__init__` loads OPT and the Q-Former's BERT from their folders, but not the checkpoint
# with the rest of the model (query tokens, `opt_proj`, `ln_vision`, the trained Q-Former); `qformer_checkpoint`
# is read only for MiniGPT-4. Within this context every `Blip2OPT` built (by `get_model`, `MultimodalEditor`,
# or directly) loads a full state-dict checkpoint (safetensors) after its own constructor has run, strictly
# (every key must match), at the checkpoint's precision: the wheel loads OPT in fp16 and an fp32 checkpoint
# would otherwise be rounded (and fp16 on CPU fails with "mixed dtype"). EasyEdit's call leaves
# `num_query_token` at its default of 32; unless the caller passes it, the checkpoint's count is used, so the
# query tokens have the checkpoint's shape.
@contextlib.contextmanager
def blip2_checkpoint(path: str | Any) -> Iterator[None]:
    """Make every ``Blip2OPT`` constructed inside the context load the full checkpoint at ``path``."""
    from pathlib import Path

    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"blip2_checkpoint: checkpoint file {path} does not exist")
    blip2_opt = importlib.import_module("easyeditor.trainer.blip2_models.blip2_opt").Blip2OPT
    original_init = blip2_opt.__init__

    state = load_file(str(path))

    def init_then_load(self, *args: Any, **kwargs: Any) -> None:
        if "query_tokens" in state:
            kwargs.setdefault("num_query_token", state["query_tokens"].shape[1])
        original_init(self, *args, **kwargs)
        dtypes = {tensor.dtype for tensor in state.values() if tensor.is_floating_point()}
        if len(dtypes) == 1:
            self.to(dtypes.pop())
        self.load_state_dict(state, strict=True)
        LOG.debug("loaded the Blip2OPT checkpoint %s (%d tensors)", path, len(state))

    blip2_opt.__init__ = init_then_load
    try:
        yield
    finally:
        blip2_opt.__init__ = original_init


# --- 9. MEND's multimodal executor passes label strings -------------------------------------------------------
# `MendMultimodalRewriteExecutor.apply_to_model` (ALG_MULTIMODAL_DICT['MEND']) builds `labels = trg`, the target
# strings, and hands them to `MEND.edit`, whose loss (`masked_log_probs`) needs token ids: every multimodal MEND
# edit through EasyEdit's editor fails with "'list' object has no attribute 'clone'". `MEND.edit` is wrapped so
# that string labels become the target's token ids, right-aligned and padded with -100 (the format of
# `VQADataset.collate_fn`, without a BOS: the loss compares the last label positions with the last logits).
# Tensor labels (EasyEdit's trainer) pass through untouched; the edit itself is EasyEdit's code.
def _label_ids(model: torch.nn.Module, labels: list[str]) -> torch.Tensor:
    tok = getattr(model, "opt_tokenizer", None) or model.llama_tokenizer
    ids = [tok(label, add_special_tokens=False).input_ids for label in labels]
    out = torch.full((len(ids), max(map(len, ids))), -100, dtype=torch.long)
    for row, sequence in enumerate(ids):
        out[row, out.shape[1] - len(sequence) :] = torch.tensor(sequence, dtype=torch.long)
    return out


def _mend_label_strings_to_ids(mend_class: type) -> bool:
    """Wrap ``MEND.edit`` (once) so string labels become token ids; returns True if it wrapped it now."""
    original = mend_class.edit
    if getattr(original, "__wrapped__", None) is not None:
        return False

    @functools.wraps(original)
    def edit(self: Any, batch: dict, *args: Any, **kwargs: Any) -> Any:
        labels = batch.get("labels") if isinstance(batch, dict) else None
        if isinstance(labels, list) and labels and all(isinstance(label, str) for label in labels):
            device = next(self.model.parameters()).device
            batch = {**batch, "labels": _label_ids(self.model, labels).to(device)}
        return original(self, batch, *args, **kwargs)

    mend_class.edit = edit
    return True


# --- 10. SERAC's multimodal executor forgets every edit but the last ------------------------------------------
# `SeracMultimodalRewriteExecutor.apply_to_model` (ALG_MULTIMODAL_DICT['SERAC_MULTI'] and ['SERAC']) calls
# `self.alg.edit(...)`, which returns a *new* SERAC_MULTI whose memory is `self.alg`'s plus the edit, and never
# keeps it: `self.alg` stays the SERAC with an empty memory, so edit T returns a model that remembers edit T alone
# (its own `keep_original_weight` branch trims `self.alg`'s memory, which shows the memory was meant to grow).
# The wrapper keeps the returned SERAC as the executor's `alg` unless `keep_original_weight` is set, so sequential
# edits accumulate in SERAC's memory as the method intends. The executor also never leaves training mode
# (`init_model` builds an `nn.Module`, training by default, and `SERAC_MULTI.edit` copies the flag), so EasyEdit
# scored SERAC with the scope classifier's dropout on and, as `SERAC_MULTI.forward` enables grad exactly in
# training mode, built autograd graphs at every scored question; the wrapper returns the edited SERAC in eval
# mode. And `SERAC_MULTI.edit` builds the new SERAC with `SERAC_MULTI(...)`, whose `__init__` creates a fresh,
# randomly initialised `language_projection` (the image features' way into the counterfactual model) instead of
# the one loaded from the archive, so after every edit the scores depended on the random generator's state (two
# seeds: reliability 0.6 and 0.4 after 10 edits); the wrapper hands the previous SERAC's projection on. The edit,
# the classifier and the counterfactual model are EasyEdit's code.
_SERAC_EXECUTOR_KEYS = ("SERAC", "SERAC_MULTI")


def _serac_keeps_its_memory(executor_class: type, alg_dict: dict) -> bool:
    """Wrap ``apply_to_model`` (once): the executor keeps the SERAC it returns, in eval mode, with the archive's image
    projection; returns True if it wrapped now.

    ``ALG_MULTIMODAL_DICT`` holds methods bound at import time, so its SERAC entries are re-bound to the wrapper
    (same executor objects: ``__self__`` and ``reset_model`` keep working).
    """
    original = executor_class.apply_to_model
    if getattr(original, "__wrapped__", None) is not None:
        return False
    parameters = inspect.signature(original)

    @functools.wraps(original)
    def apply_to_model(self: Any, *args: Any, **kwargs: Any) -> Any:
        edited, weights_copy = original(self, *args, **kwargs)
        edited.language_projection = self.alg.language_projection  # the SERAC it edited (initialised on first use)
        edited.eval()
        call = parameters.bind(self, *args, **kwargs)
        call.apply_defaults()
        if not call.arguments["keep_original_weight"]:
            self.alg = edited
        return edited, weights_copy

    executor_class.apply_to_model = apply_to_model
    for key in _SERAC_EXECUTOR_KEYS:
        executor = getattr(alg_dict.get(key), "__self__", None)
        if isinstance(executor, executor_class):
            alg_dict[key] = executor.apply_to_model
    return True


# --- 11. SERAC re-encodes its whole memory every time it answers ------------------------------------------------
# `SERAC_MULTI.embedding_logsim_matrix` tokenizes and runs the scope classifier over every remembered edit input on
# every forward, so answering one question after T edits costs a classifier pass over T texts (1.7-2.8 s per scored
# record on the toy after 1,000 edits, most of a 60-minute comparison). Outside training neither the memory's
# texts nor the classifier change between forwards. While grad is off, the wrapper lends that method a tokenizer
# that hands the texts through untouched and a classifier that tokenizes and encodes each distinct text once,
# answering repeats from a cache; the cache is dropped when any classifier parameter is updated in place (its
# version counter moves). Distances, scale and threshold stay EasyEdit's code; only the classifier outputs the
# method reads (`last_hidden_state[:, 0]`, `pooler_output`) are served per text.
@dataclasses.dataclass
class _EncodedTexts:
    """Classifier outputs per text, valid for one state of the classifier's parameters."""

    versions: tuple[int, ...] = ()
    rows: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = dataclasses.field(default_factory=dict)


class _Texts(dict):
    """What the lent tokenizer returns: the raw texts, handed to the lent classifier as ``texts=``."""

    def to(self, *args: Any, **kwargs: Any) -> _Texts:
        return self


class _EncodeEachTextOnce(torch.nn.Module):
    """Stands in for SERAC's classifier: encodes only the texts it has not seen since the parameters last changed."""

    def __init__(self, classifier: torch.nn.Module, tokenizer: Any, memo: _EncodedTexts) -> None:
        super().__init__()
        self.classifier = classifier
        self.tokenizer = tokenizer
        self.memo = memo

    def tokenize(self, texts: list[str], **kwargs: Any) -> _Texts:
        """Stands in for SERAC's tokenizer: tokenizing waits until ``forward`` knows which texts are new."""
        return _Texts(texts=list(texts))

    def forward(self, texts: list[str]) -> SimpleNamespace:
        versions = tuple(p._version for p in self.classifier.parameters())
        if versions != self.memo.versions:
            self.memo.versions, self.memo.rows = versions, {}
        new = [text for text in dict.fromkeys(texts) if text not in self.memo.rows]
        if new:
            device = next(self.classifier.parameters()).device
            out = self.classifier(**self.tokenizer(new, return_tensors="pt", padding=True).to(device))
            pooled = getattr(out, "pooler_output", None)
            for i, text in enumerate(new):
                self.memo.rows[text] = (out.last_hidden_state[i, 0], None if pooled is None else pooled[i])
        first, pooled = zip(*(self.memo.rows[text] for text in texts), strict=True)
        return SimpleNamespace(
            last_hidden_state=torch.stack(first)[:, None],  # only position 0 (the [CLS] token) is served
            pooler_output=None if pooled[0] is None else torch.stack(pooled),
        )


def _serac_encodes_memory_once(serac_class: type) -> bool:
    """Wrap ``embedding_logsim_matrix`` (once) to encode each remembered text once; True if it wrapped it now."""
    original = serac_class.embedding_logsim_matrix
    if getattr(original, "__wrapped__", None) is not None:
        return False
    memos: weakref.WeakKeyDictionary[torch.nn.Module, _EncodedTexts] = weakref.WeakKeyDictionary()

    @functools.wraps(original)
    def embedding_logsim_matrix(self: Any, cls_ctxs: list[str], test_input_text: list[str]) -> torch.Tensor:
        if torch.is_grad_enabled():  # training: the classifier changes at every step
            return original(self, cls_ctxs, test_input_text)
        classifier, tokenizer = self.classifier, self.classifier_tok
        encoder = _EncodeEachTextOnce(classifier, tokenizer, memos.setdefault(classifier, _EncodedTexts()))
        self.classifier, self.classifier_tok = encoder, encoder.tokenize
        try:
            return original(self, cls_ctxs, test_input_text)
        finally:
            self.classifier, self.classifier_tok = classifier, tokenizer

    serac_class.embedding_logsim_matrix = embedding_logsim_matrix
    return True


# --- 12. IKE loads its sentence encoder for every edit --------------------------------------------------------
# `apply_ike_to_multimodal_model` (ALG_MULTIMODAL_DICT['IKE']) and `apply_ike_to_model` build
# `SentenceTransformer(hparams.sentence_model_name)` on every call: 1,000 sequential edits load the encoder 1,000
# times (about a quarter of a second and two log lines each). The module's `SentenceTransformer` name is pointed
# at a loader that builds each (name, arguments) once and hands back that model; it only encodes, never trains.
def _ike_loads_its_encoder_once(ike_main: ModuleType) -> bool:
    """Make ``ike_main.SentenceTransformer`` cache what it builds (once); returns True if it changed it now."""
    original = ike_main.SentenceTransformer
    if getattr(original, "cache_info", None) is not None:
        return False
    ike_main.SentenceTransformer = functools.lru_cache(maxsize=4)(original)
    return True


_applied: dict[str, Any] = {}


def apply() -> dict[str, Any]:
    """Apply every import-time shim (idempotent) and import easyeditor; returns what each shim did.

    Call this before importing anything from easyeditor; `import easyedit_liveedit` does it.
    """
    if _applied:
        return _applied
    _applied["torchvision_ops_declared"] = _declare_torchvision_ops()
    _applied["transformers_helpers_restored"] = _restore_moved_transformers_helpers()
    with warnings.catch_warnings():
        # easyeditor imports timm's pre-1.0 module paths; timm answers each with a FutureWarning meant for
        # easyeditor's authors, not for our users.
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"timm\..*")
        importlib.import_module("easyeditor")
    _applied["easyeditor_util_unshadowed"] = _unshadow_easyeditor_util()
    training_hparams = importlib.import_module("easyeditor.trainer.training_hparams")
    _applied["model_parallel_defaulted"] = _default_model_parallel(training_hparams)
    mend = importlib.import_module("easyeditor.trainer.algs.MEND").MEND
    _applied["mend_label_strings_converted"] = _mend_label_strings_to_ids(mend)
    serac_executor = importlib.import_module("easyeditor.models.serac.serac_main").SeracMultimodalRewriteExecutor
    alg_dict = importlib.import_module("easyeditor.util.alg_dict").ALG_MULTIMODAL_DICT
    _applied["serac_memory_kept"] = _serac_keeps_its_memory(serac_executor, alg_dict)
    serac = importlib.import_module("easyeditor.trainer.algs.SERAC").SERAC_MULTI
    _applied["serac_memory_encoded_once"] = _serac_encodes_memory_once(serac)
    _applied["ike_encoder_loaded_once"] = _ike_loads_its_encoder_once(
        importlib.import_module("easyeditor.models.ike.ike_main")
    )
    return _applied
