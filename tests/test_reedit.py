"""Re-edits through the registered entry on the small toy world: the newest answer wins, the same edit again changes
nothing, and both hold with and without a library folder (``library_path``)."""

from __future__ import annotations

import pytest
import torch
from helpers import small_archives, toy_hparams

from easyedit_liveedit import MultimodalEditor
from easyedit_liveedit.easyedit import scoring
from easyedit_liveedit.easyedit.entry import apply_liveedit_to_multimodal_model, edit_samples, editor_for


@pytest.fixture(scope="module")
def archive(small_world, tmp_path_factory):
    return small_archives(tmp_path_factory, small_world) / "models" / "LiveEdit" / "blip2"


def _stored(live, expert_id: int) -> dict:
    experts = live.library.experts([expert_id])
    return {name: getattr(experts, name) for name in ("psi", "phi", "U", "V")}


def _made(live, hparams, tok, request) -> dict:
    """The expert ``request`` makes, in the library's storage dtype."""
    experts = live.make_experts(edit_samples(live, hparams, tok, request))
    return {name: getattr(experts, name).to(live.library.dtype) for name in ("psi", "phi", "U", "V")}


@pytest.mark.parametrize("folder", [False, True], ids=["in memory", "library_path"])
def test_the_newest_answer_wins_and_the_same_edit_again_changes_nothing(small_world, archive, tmp_path, monkeypatch,
                                                                        folder):  # fmt: skip
    """Guards re-edit semantics: X -> a, X -> b, X -> a, X -> a (one image, one question) leaves one expert, the one
    the newest request makes, after each call; the fourth call changes nothing (same id, and with a folder the same
    bytes on disk); an edit about another question is kept beside it; undoing a re-edit stores the replaced edit
    again.

    Seen failing on the code before it (in memory all four edits were stored; with a folder the third was skipped,
    so X -> b kept answering) and when every re-edit was taken for the same edit again (``_same_experts`` always
    true: X -> b never replaced X -> a), and when ``EditUndo`` stored nothing again (undoing X -> b lost X -> a).
    """
    from easyeditor import VQADataset

    monkeypatch.chdir(tmp_path)  # MultimodalEditor writes logs/ into the working directory
    library = str(tmp_path / "library") if folder else None
    hparams = toy_hparams(small_world, "LiveEdit", archive=str(archive), library_path=library)
    with small_world.easyedit_patches():
        editor = MultimodalEditor(hparams)
        ds = VQADataset(str(small_world.split("vqa_eval")), size=2, config=hparams)
    x_a, other = (scoring.request_from_item(item) for item in ds)
    x_b = {**x_a, "target": other["target"] if other["target"] != x_a["target"] else x_a["target"] + " not"}
    live = editor_for(editor.model, hparams)
    try:
        apply_liveedit_to_multimodal_model(editor.model, editor.tok, [other], hparams)
        (kept,) = live.library.ids()
        for request in (x_a, x_b, x_a):
            apply_liveedit_to_multimodal_model(editor.model, editor.tok, [request], hparams)
            assert len(live.library) == 2
            newest = max(live.library.ids())
            stored, made = _stored(live, newest), _made(live, hparams, editor.tok, request)
            assert all(torch.equal(stored[name], made[name]) for name in stored), request["target"]
        ids = live.library.ids()
        files = {p.name: p.read_bytes() for p in sorted((tmp_path / "library").iterdir())} if folder else {}
        apply_liveedit_to_multimodal_model(editor.model, editor.tok, [x_a], hparams)  # the same edit again
        assert live.library.ids() == ids and kept in ids
        if folder:
            assert {p.name: p.read_bytes() for p in sorted((tmp_path / "library").iterdir())} == files
        _, undo = apply_liveedit_to_multimodal_model(editor.model, editor.tok, [x_b], hparams)
        undo()  # the re-edit undone: X -> a is stored again (under a new id), X -> b is gone
        assert len(live.library) == 2 and kept in live.library.ids()
        stored, made = _stored(live, max(live.library.ids())), _made(live, hparams, editor.tok, x_a)
        assert all(torch.equal(stored[name], made[name]) for name in stored)
    finally:
        live.library.close()
