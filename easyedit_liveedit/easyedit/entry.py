"""``apply_liveedit_to_multimodal_model``: the ``ALG_MULTIMODAL_DICT['LiveEdit']`` entry EasyEdit calls.

EasyEdit's ``MultimodalEditor`` passes its raw backbone on every call. The backbone holds one LiveEdit editor
(networks loaded from ``hparams.archive``, hooks on layer ``edit_layer``, expert library), built by the first call:
later calls with the same hparams keep adding to its library; hparams with another archive, config or library folder
replace it, removing its hooks. The backbone called directly still answers exactly as it did before any edit (the
hooks act only inside LiveEdit's calls).

Undo has one mechanism, ``EditUndo``: it removes exactly the experts one call added, by id, in memory and (with
``library_path``) on disk, and stores again what its re-edits replaced; nothing else. The entry returns it as
EasyEdit's ``weights_copy``, which EasyEdit's editors read in two ways: EasyEdit main calls it for the methods in its
``CALLABLE_RESTORE_ALGS`` (``register()`` adds LiveEdit), the wheel copies its entries back as weights (it has none:
LiveEdit changes no weight). The plugin's ``MultimodalEditor`` calls it after scoring a non-sequential edit, and
``keep_original_weight=True`` makes the call's edits temporary: the next call of the entry runs their undo first.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..backbones import CHAT_VLM_FAMILIES, ChatVLMForEditing
from ..liveedit import Experts
from .archive import load_archive
from .editable import LiveEdit
from .hparams import LiveEditMultimodalHparams
from .validate import check_context, text_token_limit, validate_requests

LOG = logging.getLogger(__name__)

_SLOT = "_liveedit_editor"  # attribute of the backbone: its one editor and what defines it (not a submodule)


@dataclass(frozen=True)
class _Attached:
    """The backbone's LiveEdit editor and the definition (``editor_definition``) it was built from."""

    definition: tuple
    editor: LiveEdit


def editor_definition(hparams: Any) -> tuple:
    """What defines an editor: the archive it loads (by path; read once, when the editor is built), the method's
    config and the library folder."""
    archive, library = hparams.archive, getattr(hparams, "library_path", None)
    return (
        None if archive is None else os.path.abspath(archive),
        hparams.liveedit_config(),
        None if library is None else os.path.abspath(library),
    )


def attached_editor(model: nn.Module) -> LiveEdit | None:
    """The backbone's LiveEdit editor, built by an earlier edit (``model`` itself if it is one), or None."""
    if isinstance(model, LiveEdit):
        return model
    attached = model.__dict__.get(_SLOT)
    return None if attached is None else attached.editor


def release_editor(model: nn.Module) -> None:
    """Take the backbone's LiveEdit editor off it: its hooks are removed and its library folder released."""
    attached = model.__dict__.pop(_SLOT, None)
    if attached is not None:
        attached.editor.detach_hooks()
        attached.editor.library.close()


def editor_for(model: nn.Module, hparams: LiveEditMultimodalHparams, processor: Any = None) -> LiveEdit:
    """The one LiveEdit editor of ``model``, for ``hparams``.

    Built and loaded from ``hparams.archive`` on first use (``processor``: EasyEdit main's processor of a Hugging Face
    chat VLM, which the editor holds with the model). Hparams with another definition (``editor_definition``: another
    archive path, config or library folder) replace it: the old editor's hooks are removed, so a backbone carries at
    most one editor's hooks. Its in-memory experts go with it (a library folder keeps its own).
    """
    if isinstance(model, LiveEdit):
        return model
    definition = editor_definition(hparams)
    attached = model.__dict__.get(_SLOT)
    if attached is not None and attached.definition == definition:
        return attached.editor
    if hparams.archive is None:
        raise ValueError(
            f"{hparams.source or '<hparams>'}: key 'archive' is null; LiveEdit needs meta-trained networks "
            "(train them with hparams/TRAINING/LiveEdit/<model>.yaml, then point 'archive' at the result)"
        )
    hparams.check_paths(("archive",))
    editor = LiveEdit(model, hparams, processor=processor)
    try:
        archive = load_archive(editor, hparams.archive, hparams.source or "the hparams")
        editor.eval()
        LOG.debug("LiveEdit networks loaded from %s (step %s)", hparams.archive, archive.get("step"))
        if attached is not None:
            old = attached.editor.library
            LOG.info("LiveEdit: the backbone's editor (%d experts) is replaced by one for %s", len(old),
                     hparams.source or "other hparams")  # fmt: skip
            release_editor(model)  # before opening the folder, which the old editor may hold
        if getattr(hparams, "library_path", None):
            editor.open_library(hparams.library_path)  # same identity check as load_library
    except BaseException:
        editor.detach_hooks()  # a failed build leaves no hook behind
        raise
    # bypasses nn.Module registration: the editor is not part of the backbone's weights
    model.__dict__[_SLOT] = _Attached(definition, editor)
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
    """Edit with LiveEdit: one expert per request in the backbone's expert library, the newest answer winning.

    Invariants, the same with and without ``library_path``: a request about a question and image already edited
    replaces that edit's expert (X -> a, X -> b, X -> a leaves one expert, X -> a's); a request exactly like the
    stored edit changes nothing; a call that raises part-way leaves the library as it was.

    Args:
        model: EasyEdit's backbone (or a ``LiveEdit`` returned by an earlier call).
        tok: the backbone's tokenizer.
        requests: one EasyEdit multimodal request (``prompt``, ``target``, ``image`` tensor) or a list.
        hparams: ``LiveEditMultimodalHparams``. With ``library_path`` the library is that folder, and every change
            is committed to it before the call returns.
        copy, return_orig_weights: accepted for EasyEdit's signature; LiveEdit never changes a weight of
            ``model``, so there is nothing to copy or restore.
        keep_original_weight: True makes this call's edits temporary, as EasyEdit's flag means for weight-editing
            methods: the next call of the entry first removes them (EasyEdit's wheel editor never calls an undo);
            False keeps them (lifelong editing).

    Returns:
        ``(editor, weights_copy)``: the editor answers with the edits applied; ``weights_copy`` is this call's
        ``EditUndo`` (an empty mapping of weights that, called, undoes exactly this call's changes to the library).
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
    undo = EditUndo(editor)
    try:
        for request in requests:  # one at a time: each request may carry its own image size
            _edit(editor, hparams, tok, request, undo)
    except BaseException:
        undo()  # a call that fails part-way leaves the library as it was
        raise
    if keep_original_weight:
        editor.temporary_edit = undo
    return editor, undo


def _edit(editor: LiveEdit, hparams: Any, tok: Any, request: dict, undo: EditUndo) -> None:
    """Edit with one request, newest answer wins: its expert is stored under the fingerprint of its image and question
    (``request_key``); an expert already stored under it is replaced, unless it is exactly the expert this request
    makes (the same edit again: nothing changes). What changed is recorded in ``undo``."""
    key = request_key(request)
    experts = editor.make_experts(edit_samples(editor, hparams, tok, request))
    library = editor.library
    old = library.key_id(key)
    if old is not None:
        stored = library.experts([old])
        if _same_experts(stored, experts):
            LOG.info("LiveEdit: %r -> %r is already stored (expert %d); not applied again", request["prompt"],
                     request["target"], old)  # fmt: skip
            return
        editor.remove(old)
        undo.replaced.append((key, stored))
    undo.added += library.add(experts, keys=[key])


def _same_experts(stored: Experts, new: Experts) -> bool:
    """Whether ``new`` equals ``stored`` once cast to the storage dtype (an edit is one deterministic forward pass)."""
    return all(
        torch.equal(s, n.to(s.device, s.dtype))
        for s, n in ((getattr(stored, name), getattr(new, name)) for name in ("psi", "phi", "U", "V"))
    )


class EditUndo(Mapping[str, torch.Tensor]):
    """The undo of one call of the entry: calling it removes exactly the experts that call added, by id (those still
    there), and stores again the experts its re-edits replaced (same tensors and edit key, under new ids), in memory
    and, when the library is a folder, on disk; no other expert is touched. Calling it again does nothing.

    It is EasyEdit's ``weights_copy`` for LiveEdit on both targets: as a mapping it is empty (LiveEdit changes no
    weight, so an editor that copies weights back copies nothing), as a callable it is what EasyEdit main's
    ``restore_after_edit`` calls for the methods in ``CALLABLE_RESTORE_ALGS``.
    """

    def __init__(self, editor: LiveEdit) -> None:
        self.editor = editor
        self.added: list[int] = []  # ids of the experts the call stored
        self.replaced: list[tuple[str, Experts]] = []  # (edit key, expert) of each expert a re-edit removed

    def __call__(self) -> None:
        library = self.editor.library
        present = set(library.ids())
        for expert_id in self.added:
            if expert_id in present:
                self.editor.remove(expert_id)
        for key, experts in self.replaced:
            if library.key_id(key) is None:  # a later edit may have taken the key since
                library.add(experts, keys=[key])
        self.added, self.replaced = [], []

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
    """A fingerprint of what an edit is about (its question and image pixels, not its answer): the key its expert is
    stored under, so that a later edit of the same question about the same image replaces it."""
    digest = hashlib.sha256()
    digest.update(request["prompt"].encode() + b"\0")
    digest.update(_image_bytes(request["image"]))
    return digest.hexdigest()


def _image_bytes(image: Any) -> bytes:
    """Shape and pixels of an image tensor, a PIL image (EasyEdit main's chat VLMs) or a list of them."""
    if isinstance(image, (list, tuple)):
        return b"".join(_image_bytes(part) for part in image)
    pixels = image.detach().to("cpu", torch.float32).numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    return str(list(pixels.shape)).encode() + np.ascontiguousarray(pixels).tobytes()
