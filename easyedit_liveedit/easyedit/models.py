"""Building the backbone for the plugin's trainer and editor: EasyEdit's own constructors where they work, plus
what the wheel lacks.

- ``blip2`` and ``minigpt4``: EasyEdit's ``get_model`` (the trainer) or ``MultimodalEditor.__init__`` (the editor)
  builds the model; then ``checkpoints.load_glue`` loads the vision-language glue the wheel skips, or refuses.
- ``llava`` (LLaVA-1.5): the wheel has no path (``get_model`` calls ``from_pretrained("llava")``; the editor raises
  ``UnboundLocalError``), so it is built here from the local weights folder in ``name``: transformers'
  ``LlavaForConditionalGeneration`` wrapped in ``LlavaForEditing``, in fp16 on CUDA (as EasyEdit loads its language
  models) and fp32 on the CPU; with ``model_parallel: true`` it is sharded over the visible devices
  (``device_map="auto"``) and left where accelerate put it.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import torch
from torch import nn

from ..backbones.llava import LlavaForEditing, load_llava
from . import placement
from .checkpoints import load_glue

LOG = logging.getLogger(__name__)

PLUGIN_BUILT = ("llava",)  # model_name values the plugin builds itself (the wheel cannot)


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model``'s parameters live on more than one device (a ``device_map`` model): it must not be moved."""
    return len({p.device for p in model.parameters()}) > 1


def build_llava(hparams: Any) -> LlavaForEditing:
    """LLaVA-1.5 from ``hparams.name`` (a local folder), on ``hparams.device`` unless ``model_parallel`` shards it."""
    if hasattr(hparams, "check_paths"):  # LiveEdit's hparams: name the key of a missing folder
        hparams.check_paths(("name", "tokenizer_name"))
    device = placement.hparams_device(hparams)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    sharded = bool(getattr(hparams, "model_parallel", False))
    model = load_llava(
        hparams.name, hparams.tokenizer_class, hparams.tokenizer_name, dtype, "auto" if sharded else None
    )
    if not sharded:
        model.to(device)
    LOG.info("LLaVA-1.5 built from %s (%s, %s)", hparams.name, dtype, "sharded" if sharded else device)
    return model


def build_backbone(hparams: Any) -> nn.Module:
    """The backbone ``hparams`` describe, as the plugin's trainer uses it (``get_model``'s role), glue loaded.

    The model is not moved for ``blip2``/``minigpt4`` (the trainer places it); LLaVA is placed by ``build_llava``.
    """
    if hparams.model_name == "llava":
        return build_llava(hparams)
    model = importlib.import_module("easyeditor.trainer.models").get_model(hparams)
    load_glue(model, hparams)
    return model
