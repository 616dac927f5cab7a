"""``apply_liveedit_to_multimodal_model``: the ``ALG_MULTIMODAL_DICT['LiveEdit']`` entry EasyEdit calls.

EasyEdit's ``MultimodalEditor`` passes its raw backbone on every call. The LiveEdit editor built for that
backbone (networks loaded from ``hparams.archive``, hooks on layer ``edit_layer``, expert library) is kept on the
backbone object itself, keyed by what defines it (the archive and the fields that shape an expert), so sequential
calls with the same hparams keep adding to one library, a call with other hparams gets an editor of its own, and the
backbone called directly still answers exactly as it did before any edit (the hooks act only inside LiveEdit's
calls).

Undo has one mechanism, ``EditUndo``: it removes exactly the experts one call added, by id, in memory and (with
``library_path``) on disk, and nothing else. The entry returns it as EasyEdit's ``weights_copy``, which EasyEdit's
editors read in two ways: EasyEdit main calls it for the methods in its ``CALLABLE_RESTORE_ALGS`` (``register()`` adds
LiveEdit), the wheel copies its entries back as weights (it has none: LiveEdit changes no weight). The plugin's
``MultimodalEditor`` calls it after scoring a non-sequential edit, and ``keep_original_weight=True`` makes the call's
edits temporary: the next call of the entry runs their undo first.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ..backbones import CHAT_VLM_FAMILIES, ChatVLMForEditing
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


def editor_for(model: nn.Module, hparams: LiveEditMultimodalHparams, processor: Any = None) -> LiveEdit:
    """The LiveEdit editor of ``model`` for ``hparams``: built and loaded from ``hparams.archive`` on first use
    (``processor``: EasyEdit main's processor of a Hugging Face chat VLM, which the editor holds with the model)."""
    editor = attached_editor(model, hparams)
    if editor is None:
        if hparams.archive is None:
            raise ValueError(
                f"{hparams.source or '<hparams>'}: key 'archive' is null; LiveEdit needs meta-trained networks "
                "(train them with hparams/TRAINING/LiveEdit/<model>.yaml, then point 'archive' at the result)"
            )
        hparams.check_paths(("archive",))
        editor = LiveEdit(model, hparams, processor=processor)
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
        keep_original_weight: True makes this call's edits temporary, as EasyEdit's flag means for weight-editing
            methods: the next call of the entry first removes them (EasyEdit's wheel editor never calls an undo);
            False keeps them (lifelong editing).

    Returns:
        ``(editor, weights_copy)``: the editor answers with the edits applied; ``weights_copy`` is this call's
        ``EditUndo`` (an empty mapping of weights that, called, removes the experts this call added).
    """
    requests = [requests] if isinstance(requests, dict) else list(requests)
    chat_vlm = type(model).__name__ in CHAT_VLM_FAMILIES
    # all of them before the first edit: bad input changes nothing (a chat VLM's images are its processor's input)
    validate_requests(requests, "LiveEdit", image_tensors=not chat_vlm)
    editor = editor_for(model, hparams, processor=tok if chat_vlm else None)
    check_context(requests, tok, text_token_limit(editor.model), "LiveEdit")
    if editor.temporary_edit is not None:  # the last call was made with keep_original_weight=True: undo it first
        editor.temporary_edit()
        editor.temporary_edit = None
    durable = editor.library.path is not None
    added = []
    for request in requests:  # one at a time: each request may carry its own image size
        key = request_key(request) if durable else None
        if key is not None and editor.library.has_key(key):
            LOG.info("LiveEdit: %r -> %r is already in %s; not applied again", request["prompt"], request["target"],
                     editor.library.path)  # fmt: skip
            continue
        added += editor.add_edits(edit_samples(editor, hparams, tok, request), keys=None if key is None else [key])
    undo = EditUndo(editor, added)
    if keep_original_weight:
        editor.temporary_edit = undo
    return editor, undo


class EditUndo(Mapping[str, torch.Tensor]):
    """The undo of one call of the entry: calling it removes exactly the experts that call added, by id (those still
    there), in memory and, when the library is a folder, on disk; no other expert is touched. Calling it again does
    nothing.

    It is EasyEdit's ``weights_copy`` for LiveEdit on both targets: as a mapping it is empty (LiveEdit changes no
    weight, so an editor that copies weights back copies nothing), as a callable it is what EasyEdit main's
    ``restore_after_edit`` calls for the methods in ``CALLABLE_RESTORE_ALGS``.
    """

    def __init__(self, editor: LiveEdit, expert_ids: list[int]) -> None:
        self.editor = editor
        self.expert_ids = list(expert_ids)

    def __call__(self) -> None:
        present = set(self.editor.library.ids())
        for expert_id in self.expert_ids:
            if expert_id in present:
                self.editor.remove(expert_id)
        self.expert_ids = []

    def __getitem__(self, name: str) -> torch.Tensor:
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def edit_samples(editor: LiveEdit, hparams: Any, tok: Any, request: dict) -> dict[str, Any]:
    """The batch of one edit request, made by EasyEdit's own ``prepare_multimodal_edit`` (BLIP-2, MiniGPT-4) or, for
    EasyEdit main's Hugging Face chat VLMs, ``prepare_multimodal_hf_edit`` (its processor's inputs, with labels)."""
    evaluate = importlib.import_module("easyeditor.evaluate")
    if isinstance(editor.model, ChatVLMForEditing):
        file_type = request.get("file_type", "image")
        made = evaluate.prepare_multimodal_hf_edit(hparams, tok, request["target"], request["prompt"],
                                                   request["image"], file_type)  # fmt: skip
        return {**made["multimodal_inputs"], "labels": made["labels"]}
    return evaluate.prepare_multimodal_edit(hparams, tok, request["target"], request["prompt"], request["image"])


def request_key(request: dict) -> str:
    """A fingerprint of what an edit is made from (prompt, target, image pixels): the edit key in a library folder."""
    digest = hashlib.sha256()
    for part in (request["prompt"], request["target"]):
        digest.update(part.encode() + b"\0")
    digest.update(_image_bytes(request["image"]))
    return digest.hexdigest()


def _image_bytes(image: Any) -> bytes:
    """Shape and pixels of an image tensor, a PIL image (EasyEdit main's chat VLMs) or a list of them."""
    if isinstance(image, (list, tuple)):
        return b"".join(_image_bytes(part) for part in image)
    pixels = image.detach().to("cpu", torch.float32).numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    return str(list(pixels.shape)).encode() + np.ascontiguousarray(pixels).tobytes()
