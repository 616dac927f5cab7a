"""``LiveEdit``: the EasyEdit ``EditableModel`` registered as ``ALG_TRAIN_DICT['LIVEEDIT']``."""

from __future__ import annotations

from typing import Any

from torch import nn


class LiveEdit(nn.Module):
    """LiveEdit around a frozen vision-language backbone (EasyEdit's ``EditableModel`` contract)."""

    def __init__(self, model: nn.Module, config: Any, model_constructor: Any) -> None:
        raise NotImplementedError("LiveEdit meta-training is not implemented yet: it arrives with issue #4")
