"""``LiveEdit``: the method as EasyEdit's trainer and editor hold it (``ALG_TRAIN_DICT['LIVEEDIT']``).

EasyEdit's ``BaseTrainer`` builds ``ALG_TRAIN_DICT[alg](model, config, model_constructor)`` and reads
``outer_parameters()``, ``state_dict()`` and ``train()``/``eval()``; its editors call ``edit(batch, cond)``. This
class gives the method those names: it picks the backbone's adapter, turns EasyEdit's hparams into the method's
``LiveEditConfig``, attaches the library pre-filter its ``index`` key asks for, and keeps the hparams it was built
from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from torch import nn

from ..backbones import CHAT_VLM_FAMILIES, adapter_for, wrap_for_editing
from ..index import configure_index
from ..liveedit import LiveEditConfig, LiveEditModel


def liveedit_config(config: Any) -> LiveEditConfig:
    """The method's config alone, from a ``LiveEditConfig`` or LiveEdit hparams (which subclass it)."""
    if isinstance(config, LiveEditConfig):
        return config.liveedit_config()
    raise TypeError(
        f"LiveEdit needs a LiveEditConfig or LiveEdit hparams (LiveEditMultimodalHparams), got {type(config).__name__}"
    )


class LiveEdit(LiveEditModel):
    """``LiveEditModel`` with EasyEdit's ``EditableModel`` names; the backbone's adapter is chosen by its class."""

    def __init__(self, model: nn.Module, config: Any, model_constructor: Any = None, processor: Any = None) -> None:
        """Args: ``model`` the backbone; ``config`` LiveEdit hparams or a ``LiveEditConfig``; ``model_constructor``
        accepted for EasyEdit's signature (LiveEdit never copies the backbone); ``processor`` the processor of one of
        EasyEdit main's Hugging Face chat VLMs (loaded from ``config.name`` if not given, as EasyEdit's trainer
        passes none), which LiveEdit holds wrapped (``backbones.ChatVLMForEditing``)."""
        if type(model).__name__ in CHAT_VLM_FAMILIES and processor is None:
            from transformers import AutoProcessor

            processor = AutoProcessor.from_pretrained(config.name)
        model = wrap_for_editing(model, processor)
        super().__init__(model, liveedit_config(config), adapter_for(model))
        configure_index(self.library, self.config, getattr(config, "source", None) or "<config>")
        self.hparams = config
        # the undo of the last edit made with keep_original_weight=True, run by the next edit (``entry.EditUndo``)
        self.temporary_edit: Callable[[], None] | None = None

    def forward(self, samples: dict[str, Any] | None = None, **inputs: Any) -> Any:
        """The routed forward on one batch: a dict (EasyEdit's BLIP-2 / MiniGPT-4 batches), or keyword tensors
        (EasyEdit main calls its Hugging Face models as ``model(**multimodal_inputs)``)."""
        return super().forward(inputs if samples is None else samples)

    def edit(
        self, batch: dict[str, Any], condition: Any = None, detach_history: bool = False
    ) -> tuple[nn.Module, dict]:
        """EasyEdit's ``edit``: adds the batch's experts to this editor and returns it (edits accumulate: that is
        lifelong editing; ``reset()`` or ``remove(expert_id)`` undoes them)."""
        ids = self.add_edits(batch)
        return self, {"edit/experts": float(len(ids))}

    def outer_parameters(self) -> Iterator[nn.Parameter]:
        """What meta-training updates: the LiveEdit networks only."""
        return self.net.parameters()
