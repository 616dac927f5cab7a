"""Registration of LiveEdit inside EasyEdit's method tables: one explicit, idempotent, validated call."""

from __future__ import annotations

import importlib
from collections.abc import MutableMapping
from typing import Any

from . import compat
from .editable import LiveEdit
from .entry import apply_liveedit_to_multimodal_model
from .hparams import LiveEditMultimodalHparams, LiveEditMultimodalTrainingHparams

MULTIMODAL_KEY = "LiveEdit"  # ALG_MULTIMODAL_DICT key = `alg_name` in editing YAMLs
TRAIN_KEY = "LIVEEDIT"  # BaseTrainer looks up ALG_TRAIN_DICT[config.alg.upper()]


def _put(table: MutableMapping[str, Any], key: str, value: Any, table_name: str) -> None:
    """Insert ``value`` under ``key`` in place; refuse to overwrite somebody else's entry."""
    current = table.get(key)
    if current is not None and current is not value:
        owner = getattr(current, "__module__", type(current).__module__)
        if not owner.startswith("easyedit_liveedit"):
            raise RuntimeError(f"{table_name}[{key!r}] is already registered by {owner}; refusing to overwrite it")
    table[key] = value


def register() -> None:
    """Make ``alg_name: LiveEdit`` / ``alg: LiveEdit`` work in EasyEdit; safe to call any number of times.

    Mutates EasyEdit's own dicts in place (every EasyEdit module that star-imported them holds the same
    objects) and exposes the hparams classes as ``easyeditor.LiveEditMultimodal[Training]Hparams`` beside
    EasyEdit's built-in ones.
    """
    compat.apply()
    alg_dict = importlib.import_module("easyeditor.util.alg_dict")
    train_dict = importlib.import_module("easyeditor.util.alg_train_dict")
    _put(alg_dict.ALG_MULTIMODAL_DICT, MULTIMODAL_KEY, apply_liveedit_to_multimodal_model, "ALG_MULTIMODAL_DICT")
    _put(train_dict.ALG_TRAIN_DICT, TRAIN_KEY, LiveEdit, "ALG_TRAIN_DICT")

    easyeditor = importlib.import_module("easyeditor")
    for cls in (LiveEditMultimodalHparams, LiveEditMultimodalTrainingHparams):
        setattr(easyeditor, cls.__name__, cls)
