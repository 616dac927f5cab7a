"""EasyEdit's constructors on the toy world's small backbone: the shims that only a small ``Blip2OPT`` needs.

EasyEdit builds BLIP-2 with a hard-coded 986M-parameter EVA ViT-g, a 364-pixel image processor, and (in the wheel)
without loading the model's full checkpoint. The toy world swaps in its own vision tower and image size and loads
its own full checkpoint while EasyEdit's own constructors run (``backbone.easyedit_patches``).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

LOG = logging.getLogger(__name__)


# --- EasyEdit's hard-coded EVA ViT-g ------------------------------------------------------------------------
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


# --- The 364-pixel image processor hard-coded in EasyEdit's multimodal datasets and editor -----------------
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


# --- The BLIP-2 checkpoint that the wheel's Blip2OPT never loads -------------------------------------------
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
