"""Backbone adapters: one per model family, chosen by the model's class."""

from __future__ import annotations

from torch import nn

from ..liveedit.backbone import BackboneAdapter, TokenLayout, prefix_layout, span_layout
from .blip2 import Blip2OPTAdapter
from .llava import LlavaAdapter, LlavaForEditing
from .minigpt4 import MiniGPT4Adapter

_ADAPTERS: dict[str, type[BackboneAdapter]] = {
    "Blip2OPT": Blip2OPTAdapter,
    "MiniGPT4": MiniGPT4Adapter,
    "LlavaForEditing": LlavaAdapter,
}
# Families that need wrapping before LiveEdit can hold them (they do not take EasyEdit's sample dict).
_WRAP_FIRST = {"LlavaForConditionalGeneration": "wrap it first: LlavaForEditing(model, tokenizer)"}


def adapter_for(model: nn.Module) -> BackboneAdapter:
    """The adapter for ``model``'s family; ``NotImplementedError`` naming the class if there is none yet."""
    for cls in type(model).__mro__:
        if cls.__name__ in _ADAPTERS:
            return _ADAPTERS[cls.__name__]()
    name = type(model).__name__
    if name in _WRAP_FIRST:
        raise NotImplementedError(f"LiveEdit cannot hold a bare {name}: {_WRAP_FIRST[name]}")
    raise NotImplementedError(
        f"LiveEdit has no backbone adapter for {name} yet; supported: {', '.join(sorted(_ADAPTERS))}"
    )


__all__ = [
    "BackboneAdapter",
    "Blip2OPTAdapter",
    "LlavaAdapter",
    "LlavaForEditing",
    "MiniGPT4Adapter",
    "TokenLayout",
    "adapter_for",
    "prefix_layout",
    "span_layout",
]
