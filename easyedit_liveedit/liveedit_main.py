"""``apply_liveedit_to_multimodal_model``: the ``ALG_MULTIMODAL_DICT['LiveEdit']`` entry EasyEdit calls.

EasyEdit's ``MultimodalEditor`` passes its raw backbone on every call. The LiveEdit editor built for that
backbone (networks loaded from ``hparams.archive``, hook on layer ``edit_layer``, expert library) is kept
on the backbone object itself, so sequential calls keep adding to one library, and the backbone called
directly still answers exactly as it did before any edit (the hook is inert outside LiveEdit's calls).
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import torch
from torch import nn

from .editor import LiveEdit
from .liveedit_hparams import LiveEditMultimodalHparams

LOG = logging.getLogger(__name__)

_ATTACHED = "_liveedit_editor"  # attribute of the backbone holding its editor (not a registered submodule)


def attached_editor(model: nn.Module) -> LiveEdit | None:
    """The LiveEdit editor built for this backbone by an earlier edit, if any."""
    return model.__dict__.get(_ATTACHED)


def editor_for(model: nn.Module, hparams: LiveEditMultimodalHparams) -> LiveEdit:
    """The LiveEdit editor of ``model``: built and loaded from ``hparams.archive`` on first use."""
    if isinstance(model, LiveEdit):
        return model
    editor = attached_editor(model)
    if editor is None:
        if hparams.archive is None:
            raise ValueError(
                f"{hparams.source or '<hparams>'}: key 'archive' is null; LiveEdit needs meta-trained networks "
                "(train them with hparams/TRAINING/LiveEdit/<model>.yaml, then point 'archive' at the result)"
            )
        hparams.check_paths(("archive",))
        editor = LiveEdit(model, hparams)
        device = next(model.parameters()).device
        archive = torch.load(hparams.archive, map_location=device, weights_only=True)
        editor.load_state_dict(archive["model"])
        editor.eval()
        LOG.info("LiveEdit networks loaded from %s (step %s)", hparams.archive, archive.get("step"))
        model.__dict__[_ATTACHED] = editor  # bypasses nn.Module registration: not part of the backbone's weights
    return editor


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
    """Edit with LiveEdit: one expert per request, appended to the backbone's expert library.

    Args:
        model: EasyEdit's backbone (or a ``LiveEdit`` returned by an earlier call).
        tok: the backbone's tokenizer.
        requests: one EasyEdit multimodal request (``prompt``, ``target``, ``image`` tensor) or a list.
        hparams: ``LiveEditMultimodalHparams``.
        copy, return_orig_weights: accepted for EasyEdit's signature; LiveEdit never changes a weight of
            ``model``, so there is nothing to copy or restore.
        keep_original_weight: True makes every call edit the unedited model (the library is emptied
            first), as EasyEdit's flag means for weight-editing methods; False accumulates edits.

    Returns:
        ``(editor, {})``: the editor answers with the edits applied; the empty dict tells EasyEdit that
        no weight needs restoring.
    """
    requests = [requests] if isinstance(requests, dict) else list(requests)
    editor = editor_for(model, hparams)
    if keep_original_weight:
        editor.reset()
    prepare = importlib.import_module("easyeditor.evaluate.evaluate").prepare_multimodal_edit
    for request in requests:  # one at a time: each request may carry its own image size
        samples = prepare(hparams, tok, request["target"], request["prompt"], request["image"])
        editor.add_edits(samples)
    return editor, {}
