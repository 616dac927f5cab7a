"""Backbone adapters: one per model family, chosen by the model's class."""

from __future__ import annotations

from torch import nn

from .base import BackboneAdapter, TokenLayout, prefix_layout
from .blip2 import Blip2OPTAdapter

_ADAPTERS: dict[str, type[BackboneAdapter]] = {"Blip2OPT": Blip2OPTAdapter}


def adapter_for(model: nn.Module) -> BackboneAdapter:
    """The adapter for ``model``'s family; ``NotImplementedError`` naming the class if there is none yet."""
    for cls in type(model).__mro__:
        if cls.__name__ in _ADAPTERS:
            return _ADAPTERS[cls.__name__]()
    raise NotImplementedError(
        f"LiveEdit has no backbone adapter for {type(model).__name__} yet; supported: {', '.join(sorted(_ADAPTERS))}"
    )


__all__ = ["BackboneAdapter", "Blip2OPTAdapter", "TokenLayout", "adapter_for", "prefix_layout"]
