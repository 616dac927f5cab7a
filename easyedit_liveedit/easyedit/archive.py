"""A LiveEdit archive: EasyEdit's trainer checkpoint plus the config it was trained with, read back only into an editor
configured the same way.

EasyEdit's ``BaseTrainer.save_state`` writes ``torch.save({"model": state_dict, "opt": ..., "step": ...})``; the
plugin's trainer (``trainer.py``) adds ``CONFIG_KEY``: the ``LiveEditConfig`` the networks were trained with
(``config_dict()``, plain values, which ``torch.load(weights_only=True)`` reads). ``load_archive`` refuses an archive
whose recorded config differs from the editor's in a field that changes the computation
(``LiveEditConfig.mismatches``), naming the file, the field and both values. An archive written before configs were
recorded (a plain EasyEdit checkpoint) still loads: then only the weights' names and shapes are checked, so a value
that changes no shape (``lora_scale``) cannot be.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..liveedit import LiveEditConfig, LiveEditModel

LOG = logging.getLogger(__name__)

CONFIG_KEY = "liveedit_config"  # the archive entry holding the trained config (a dict of plain values)


def check_config(archive: Mapping[str, Any], config: LiveEditConfig, path: str | os.PathLike, source: str) -> None:
    """Refuse ``archive`` if the config it records differs from ``config`` in a shape or computation field.

    Raises:
        ValueError: naming ``path``, the first differing field, the archive's value and ``source``'s value.
    """
    stored = archive.get(CONFIG_KEY)
    if stored is None:
        LOG.info("%s records no LiveEdit config (written before configs were stored): only shapes are checked", path)
        return
    differing = config.mismatches(stored)
    if differing:
        name, trained, current = differing[0]
        more = f" (and {', '.join(n for n, _, _ in differing[1:])})" if len(differing) > 1 else ""
        raise ValueError(
            f"{path}: the LiveEdit archive was trained with {name}={trained!r}, but {source} sets {name}={current!r}"
            f"{more}; the networks would compute something else than was trained"
        )


def check_weights(state: Mapping[str, Tensor], editor: LiveEditModel, path: str | os.PathLike) -> None:
    """Refuse a state dict whose tensor names or shapes differ from ``editor``'s networks, naming ``path`` and the
    first tensor that differs."""
    expected = {name: tuple(t.shape) for name, t in editor.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in state.items()}
    for name in sorted(expected.keys() | found.keys()):
        if expected.get(name) != found.get(name):
            raise ValueError(
                f"{path}: tensor {name!r} of the LiveEdit archive has shape {found.get(name)}, the networks these "
                f"hparams build have {expected.get(name)} (None: absent); it was trained with another config"
            )


def load_archive(editor: LiveEditModel, path: str | os.PathLike, source: str = "<hparams>") -> dict[str, Any]:
    """Load the networks of ``editor`` from the archive at ``path`` after both checks above; returns the archive.

    ``path`` holds EasyEdit's checkpoint dict (``{"model": state_dict, ...}``) or a bare state dict.
    """
    archive = torch.load(path, map_location=next(editor.net.parameters()).device, weights_only=True)
    state = archive.get("model", archive)
    check_config(archive, editor.config, path, source)
    check_weights(state, editor, path)
    editor.load_state_dict(state)
    return archive
