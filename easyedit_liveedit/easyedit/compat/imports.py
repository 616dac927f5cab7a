"""Fixes without which easyeditor cannot be imported on a modern stack: applied by ``import easyedit_liveedit``.

Each fix detects the behaviour it covers and does nothing where that behaviour is absent, says what it covers,
and has a test per EasyEdit target that fails if it stops working or stops being needed. None of them changes
what an EasyEdit editor computes (those fixes live in ``baselines.py`` and apply only inside the harness).
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import inspect
import logging
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

LOG = logging.getLogger(__name__)

# --- torchvision: torchvision from PyPI next to the CPU torch ----------------------------------------------------
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


# --- transformers: Q-Former helpers that moved out of transformers.modeling_utils ---------------------------------
# The wheel's copied Q-Former (`trainer/blip2_models/Qformer.py`) imports `apply_chunking_to_forward`,
# `find_pruneable_heads_and_indices` and `prune_linear_layer` from `transformers.modeling_utils`; since
# transformers 4.4x they live only in `transformers.pytorch_utils`. EasyEdit main's Q-Former imports them from
# `pytorch_utils` itself (with its own fallback for `find_pruneable_heads_and_indices`, which transformers 5 removed):
# there the fix finds nothing to do. It reads which names the Q-Former's source imports from `modeling_utils`
# (importing the module is what fails) and copies only those that `modeling_utils` lacks and `pytorch_utils` has.
_MOVED_TO_PYTORCH_UTILS = ("apply_chunking_to_forward", "find_pruneable_heads_and_indices", "prune_linear_layer")


def _qformer_source() -> str:
    """The text of easyeditor's ``trainer/blip2_models/Qformer.py``, found without importing easyeditor."""
    spec = importlib.util.find_spec("easyeditor")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("easyeditor is not importable: install the wheel or put EasyEdit main on PYTHONPATH")
    folder = Path(next(iter(spec.submodule_search_locations)))
    return (folder / "trainer" / "blip2_models" / "Qformer.py").read_text()


def _restore_moved_transformers_helpers() -> list[str]:
    """Re-export the moved helpers the Q-Former imports from their old module; returns the names restored."""
    import transformers.modeling_utils as modeling_utils
    import transformers.pytorch_utils as pytorch_utils

    imported = {
        alias.name
        for node in ast.walk(ast.parse(_qformer_source()))
        if isinstance(node, ast.ImportFrom) and node.module == "transformers.modeling_utils"
        for alias in node.names
    }
    missing = [
        name
        for name in _MOVED_TO_PYTORCH_UTILS
        if name in imported and not hasattr(modeling_utils, name) and hasattr(pytorch_utils, name)
    ]
    for name in missing:
        setattr(modeling_utils, name, getattr(pytorch_utils, name))
    return missing


# --- easyeditor: subpackages shadowed by easyeditor's star imports ------------------------------------------------
# `easyeditor/__init__` star-imports every method package; the wheel's `easyeditor.models.ike` (EasyEdit main's
# `easyeditor.models.melo`) exports a module named `util`, which overwrites the attribute `easyeditor.util`. Then
# `import easyeditor.util.alg_dict as d` (the way users reach ALG_MULTIMODAL_DICT) fails with "cannot import name
# 'alg_dict' from 'easyeditor.models.ike.util'". Point the attribute back at the real subpackage.
def _unshadow_easyeditor_util() -> bool:
    """Re-bind ``easyeditor.util`` to the ``easyeditor.util`` package; returns True if it was shadowed."""
    easyeditor = sys.modules["easyeditor"]
    util = importlib.import_module("easyeditor.util")
    shadowed = easyeditor.util is not util
    easyeditor.util = util
    return shadowed


# --- transformers 5: EasyEdit's copied Q-Former never calls `post_init` -------------------------------------------
# EasyEdit's `trainer/blip2_models/Qformer.py` (the wheel's and main's) ends `BertModel.__init__` and
# `BertLMHeadModel.__init__` with `self.init_weights()`, not `self.post_init()`. transformers 5 computes
# `all_tied_weights_keys` only in `post_init` and reads it in `from_pretrained`, so `Blip2Base.init_Qformer`
# (`BertLMHeadModel.from_pretrained`) fails with "'BertLMHeadModel' object has no attribute 'all_tied_weights_keys'":
# (transformers 5.5 already fails inside the constructor, whose `init_weights` ties weights by those keys): no BLIP-2
# or MiniGPT-4 builds, EasyEdit main's own included. transformers 5 also removed
# `ModuleUtilsMixin.get_head_mask`, which the Q-Former's `BertModel.forward` calls. The fix gives the Q-Former's base
# class an `init_weights` that runs `post_init` first (which computes the keys and calls `init_weights` again) and
# transformers 4's `get_head_mask`; each part only where the behaviour it covers is seen.
def _head_mask(self: Any, head_mask: torch.Tensor | None, num_hidden_layers: int, is_attention_chunked: bool = False):
    """transformers 4's ``ModuleUtilsMixin.get_head_mask`` (removed in transformers 5)."""
    if head_mask is None:
        return [None] * num_hidden_layers
    if head_mask.dim() == 1:
        head_mask = head_mask[None, None, :, None, None].expand(num_hidden_layers, -1, -1, -1, -1)
    elif head_mask.dim() == 2:
        head_mask = head_mask[:, None, :, None, None]  # one mask per layer
    head_mask = head_mask.to(dtype=self.dtype)
    return head_mask.unsqueeze(-1) if is_attention_chunked else head_mask


def _qformer_misses_tied_weights_keys(qformer: ModuleType) -> bool:
    """Whether building a Q-Former ``BertModel`` (one layer, width 8) fails for want of ``all_tied_weights_keys``."""
    from transformers import BertConfig

    config = BertConfig(vocab_size=8, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8)
    try:
        qformer.BertModel(config, add_pooling_layer=False)
    except AttributeError as error:
        if "all_tied_weights_keys" in str(error):
            return True
        raise
    return False


def _qformer_on_transformers5(qformer: ModuleType) -> list[str]:
    """Patch the Q-Former's ``BertPreTrainedModel`` where this transformers needs it; returns what was patched."""
    from transformers.modeling_utils import PreTrainedModel

    base = qformer.BertPreTrainedModel
    patched = []
    if "init_weights" not in vars(base) and _qformer_misses_tied_weights_keys(qformer):
        init_weights = PreTrainedModel.init_weights

        def post_init_first(self: Any) -> None:
            if "all_tied_weights_keys" not in vars(self):
                self.post_init()  # computes the keys, then calls init_weights again (the branch below)
                return
            init_weights(self)

        base.init_weights = post_init_first
        patched.append("post_init")
    if not hasattr(base, "get_head_mask") and "get_head_mask" in inspect.getsource(qformer.BertModel.forward):
        base.get_head_mask = _head_mask
        patched.append("get_head_mask")
    return patched


# --- transformers 5: EasyEdit's copied models overwrite the weights `from_pretrained` just loaded -----------------
# transformers 5's `from_pretrained` loads the checkpoint, then runs the class's `_init_weights` over every module not
# marked as loaded; it can only tell that a module is fully loaded when `_init_weights` goes through its guarded
# init functions, or when the class is remote code, whose modules with all parameters loaded it skips. EasyEdit's
# copied OPT, LLaMA and Q-Former (`trainer/blip2_models/`) are neither: their `_init_weights` write in place
# (`module.weight.data.normal_(...)`), so every Linear and Embedding weight they load is re-drawn at random. EasyEdit
# main's own BLIP-2 and MiniGPT-4 then answer with a random language model, silently. The fix wraps each class's
# `_init_weights` to skip a module whose own parameters are all marked loaded, as transformers does for remote
# code; only where this transformers marks loaded parameters and skips such modules for remote code alone.
_COPIED_PRETRAINED_MODELS = (("Qformer", "BertPreTrainedModel"), ("modeling_opt", "OPTPreTrainedModel"),
                             ("modeling_llama", "LlamaPreTrainedModel"))  # fmt: skip


def _skips_loaded_modules(init_weights: Callable) -> Callable:
    """``init_weights`` that leaves a module alone when each of its own parameters was loaded from the checkpoint."""

    @functools.wraps(init_weights)
    def init_unless_loaded(self: Any, module: torch.nn.Module) -> None:
        own = list(module.parameters(recurse=False))
        if own and all(getattr(p, "_is_hf_initialized", False) for p in own):
            return
        init_weights(self, module)

    init_unless_loaded._skips_loaded_modules = True
    return init_unless_loaded


def _loaded_weights_kept(blip2_models: str) -> list[str]:
    """Wrap the copied classes' ``_init_weights`` where this transformers needs it; returns the classes wrapped."""
    from transformers.modeling_utils import PreTrainedModel

    if "is_remote_code" not in inspect.signature(PreTrainedModel._initialize_weights).parameters:
        return []  # transformers 4: loading marks whole modules initialised, whatever `_init_weights` does
    wrapped = []
    for module_name, class_name in _COPIED_PRETRAINED_MODELS:
        cls = getattr(importlib.import_module(f"{blip2_models}.{module_name}"), class_name)
        init_weights = vars(cls).get("_init_weights")
        if init_weights is None or getattr(init_weights, "_skips_loaded_modules", False):
            continue
        if ".data." not in inspect.getsource(init_weights):  # written with guarded init functions: nothing to do
            continue
        cls._init_weights = _skips_loaded_modules(init_weights)
        wrapped.append(class_name)
    return wrapped


# --- transformers 5: the rotary caches of EasyEdit's copied LLaMA (MiniGPT-4) -----------------------------------
# EasyEdit's `modeling_llama.LlamaRotaryEmbedding.__init__` computes `cos_cached` / `sin_cached` as non-persistent
# buffers. transformers 5's `from_pretrained` builds the model on the meta device and materialises only what the
# checkpoint holds, so those two caches are left as uninitialised memory: MiniGPT-4's logits come out as NaN or
# garbage, silently. On each rotary module's first forward this checks its caches against what `__init__` computes
# for the module (its `inv_freq` and length) and writes them in only if they differ; a correctly built module
# (transformers 4) is left untouched.
def _rotary_caches_checked(llama: ModuleType) -> bool:
    """Wrap ``LlamaRotaryEmbedding.forward`` of EasyEdit's LLaMA copy once; returns True when it wrapped it."""
    cls = llama.LlamaRotaryEmbedding
    forward = cls.forward
    if getattr(forward, "_caches_checked", False):
        return False

    @functools.wraps(forward)
    def checked_forward(self: Any, x: torch.Tensor, seq_len: int | None = None) -> Any:
        if not vars(self).get("_caches_checked"):
            _rebuild_rotary_caches(self)
            vars(self)["_caches_checked"] = True
        return forward(self, x, seq_len=seq_len)

    checked_forward._caches_checked = True
    cls.forward = checked_forward
    return True


def _rebuild_rotary_caches(module: Any) -> bool:
    """Write ``__init__``'s caches into ``module`` if its own differ; returns True when they did."""
    inv_freq = module.inv_freq.detach().float().cpu()
    t = torch.arange(module.max_seq_len_cached, dtype=torch.float32)
    emb = torch.cat([torch.outer(t, inv_freq)] * 2, dim=-1)  # (positions, head_dim), as __init__ builds it
    expected = {"cos_cached": emb.cos()[None, None], "sin_cached": emb.sin()[None, None]}
    stale = [
        name
        for name, value in expected.items()
        if getattr(module, name).shape != value.shape
        or not torch.allclose(getattr(module, name).detach().float().cpu(), value, atol=1e-3)
    ]
    for name in stale:
        current = getattr(module, name)
        module.register_buffer(name, expected[name].to(current.device, current.dtype), persistent=False)
    if stale:
        LOG.debug("rebuilt the rotary caches %s of EasyEdit's LLaMA (left uninitialised by from_pretrained)", stale)
    return bool(stale)


_applied: dict[str, Any] = {}


def apply() -> dict[str, Any]:
    """Apply the import fixes (idempotent) and import easyeditor; returns what each fix did.

    Call this before importing anything from easyeditor; ``import easyedit_liveedit`` does it.
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
    blip2_models = "easyeditor.trainer.blip2_models"
    _applied["qformer_transformers5"] = _qformer_on_transformers5(importlib.import_module(f"{blip2_models}.Qformer"))
    _applied["loaded_weights_kept"] = _loaded_weights_kept(blip2_models)
    _applied["llama_rotary_caches_checked"] = _rotary_caches_checked(
        importlib.import_module(f"{blip2_models}.modeling_llama")
    )
    return _applied
