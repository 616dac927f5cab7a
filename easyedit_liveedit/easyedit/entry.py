"""``apply_liveedit_to_multimodal_model``: the ``ALG_MULTIMODAL_DICT['LiveEdit']`` entry EasyEdit calls.

EasyEdit's ``MultimodalEditor`` passes its raw backbone on every call. The LiveEdit editor built for that
backbone (networks loaded from ``hparams.archive``, hooks on layer ``edit_layer``, expert library) is kept on the
backbone object itself, keyed by what defines it (the archive and the fields that shape an expert), so sequential
calls with the same hparams keep adding to one library, a call with other hparams gets an editor of its own, and the
backbone called directly still answers exactly as it did before any edit (the hooks act only inside LiveEdit's
calls).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
from typing import Any

import torch
from torch import nn

from .editable import LiveEdit
from .hparams import LiveEditMultimodalHparams
from .validate import check_context, text_token_limit, validate_requests

LOG = logging.getLogger(__name__)

_ATTACHED = "_liveedit_editors"  # attribute of the backbone: {editor key: editor} (not registered submodules)


def editor_key(hparams: Any) -> tuple:
    """What defines an editor: its archive (path, size, modification time) and the method's config."""
    archive = hparams.archive
    stamp = None
    if archive is not None and os.path.exists(archive):
        stat = os.stat(archive)
        stamp = (os.path.abspath(archive), stat.st_size, stat.st_mtime_ns)
    return stamp, hparams.liveedit_config(), getattr(hparams, "library_path", None)


def attached_editor(model: nn.Module, hparams: Any) -> LiveEdit | None:
    """The LiveEdit editor built for this backbone and these hparams by an earlier edit, if any."""
    if isinstance(model, LiveEdit):
        return model
    return model.__dict__.get(_ATTACHED, {}).get(editor_key(hparams))


def editor_for(model: nn.Module, hparams: LiveEditMultimodalHparams) -> LiveEdit:
    """The LiveEdit editor of ``model`` for ``hparams``: built and loaded from ``hparams.archive`` on first use."""
    editor = attached_editor(model, hparams)
    if editor is None:
        if hparams.archive is None:
            raise ValueError(
                f"{hparams.source or '<hparams>'}: key 'archive' is null; LiveEdit needs meta-trained networks "
                "(train them with hparams/TRAINING/LiveEdit/<model>.yaml, then point 'archive' at the result)"
            )
        hparams.check_paths(("archive",))
        editor = LiveEdit(model, hparams)
        archive = torch.load(hparams.archive, map_location=next(editor.net.parameters()).device, weights_only=True)
        editor.load_state_dict(archive["model"])
        editor.eval()
        LOG.info("LiveEdit networks loaded from %s (step %s)", hparams.archive, archive.get("step"))
        if getattr(hparams, "library_path", None):
            editor.open_library(hparams.library_path)  # same identity check as load_library
        # bypasses nn.Module registration: the editors are not part of the backbone's weights
        model.__dict__.setdefault(_ATTACHED, {})[editor_key(hparams)] = editor
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
        hparams: ``LiveEditMultimodalHparams``. With ``library_path`` the library is that folder: each request is
            committed to it under a fingerprint of its prompt, target and image, and one already there is skipped.
        copy, return_orig_weights: accepted for EasyEdit's signature; LiveEdit never changes a weight of
            ``model``, so there is nothing to copy or restore.
        keep_original_weight: True makes every call edit the unedited model (the library is emptied
            first), as EasyEdit's flag means for weight-editing methods; False accumulates edits.

    Returns:
        ``(editor, {})``: the editor answers with the edits applied; the empty dict tells EasyEdit that
        no weight needs restoring.
    """
    requests = [requests] if isinstance(requests, dict) else list(requests)
    validate_requests(requests, "LiveEdit")  # all of them before the first edit: bad input changes nothing
    editor = editor_for(model, hparams)
    check_context(requests, tok, text_token_limit(editor.model), "LiveEdit")
    durable = editor.library.path is not None
    if keep_original_weight:
        if durable:
            raise ValueError(
                f"keep_original_weight=True empties the expert library before every edit, which would erase the edits "
                f"committed to library_path {editor.library.path}; edit with keep_original_weight=False"
            )
        editor.reset()
    prepare = importlib.import_module("easyeditor.evaluate.evaluate").prepare_multimodal_edit
    for request in requests:  # one at a time: each request may carry its own image size
        key = request_key(request) if durable else None
        if key is not None and editor.library.has_key(key):
            LOG.info("LiveEdit: %r -> %r is already in %s; not applied again", request["prompt"], request["target"],
                     editor.library.path)  # fmt: skip
            continue
        samples = prepare(hparams, tok, request["target"], request["prompt"], request["image"])
        editor.add_edits(samples, keys=None if key is None else [key])
    return editor, {}


def request_key(request: dict) -> str:
    """A fingerprint of what an edit is made from (prompt, target, image pixels): the edit key in a library folder."""
    digest = hashlib.sha256()
    for part in (request["prompt"], request["target"]):
        digest.update(part.encode() + b"\0")
    image = request["image"]
    digest.update(str(list(image.shape)).encode())
    digest.update(image.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()
