"""``apply_liveedit_to_multimodal_model``: the ``ALG_MULTIMODAL_DICT['LiveEdit']`` entry EasyEdit calls.

EasyEdit's ``MultimodalEditor`` passes its raw backbone on every call. The LiveEdit editor built for that
backbone (networks loaded from ``hparams.archive``, hooks on layer ``edit_layer``, expert library) is kept on the
backbone object itself, keyed by what defines it (the archive and the fields that shape an expert), so sequential
calls with the same hparams keep adding to one library, a call with other hparams gets an editor of its own, and the
backbone called directly still answers exactly as it did before any edit (the hooks act only inside LiveEdit's
calls).

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
from typing import Any

import numpy as np
import torch
from torch import nn

from ..backbones import CHAT_VLM_FAMILIES, ChatVLMForEditing
from ..liveedit import Experts
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
