"""``apply_liveedit_to_multimodal_model``: the ``ALG_MULTIMODAL_DICT['LiveEdit']`` entry EasyEdit calls."""

from __future__ import annotations

from typing import Any

from torch import nn

from .liveedit_hparams import LiveEditMultimodalHparams


def apply_liveedit_to_multimodal_model(
    model: nn.Module,
    tok: Any,
    requests: dict | list[dict],
    hparams: LiveEditMultimodalHparams,
    copy: bool = False,
    return_orig_weights: bool = False,
    keep_original_weight: bool = False,
    **kwargs: Any,
) -> tuple[nn.Module, dict]:
    """Edit ``model`` with LiveEdit; the signature EasyEdit's ``MultimodalEditor`` calls."""
    raise NotImplementedError("LiveEdit editing is not implemented yet: it arrives with issue #4 (LiveEdit itself)")
