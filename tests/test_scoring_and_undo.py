"""One scoring module for the comparison and the editor API, and undo that undoes, on the small toy world.

- Locality is measured against the unedited model through both paths: a stand-in editor that perturbs the language
  model's output layer must show locality below 1 in the comparison's rows and in ``MultimodalEditor``'s metrics.
- ``MultimodalEditor.edit_dataset(sequential_edit=False)`` undoes each method's edit before the next one: every
  edit of LiveEdit, MEND and SERAC meets the unedited state, while sequential editing accumulates.
- LiveEdit's one undo (``EditUndo``) removes exactly the experts an edit added, from a library folder that already
  holds experts, through every path that undoes (the editor API, EasyEdit main's call, ``keep_original_weight``).
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import small_archives, toy_hparams

from easyedit_liveedit import MultimodalEditor
from easyedit_liveedit.bench.engine import Backbone, CompareSettings, MethodRun, compare
from easyedit_liveedit.easyedit import scoring
from easyedit_liveedit.easyedit.compat import baseline_fixes
from easyedit_liveedit.easyedit.entry import apply_liveedit_to_multimodal_model, attached_editor, editor_for
from easyedit_liveedit.liveedit import ExpertLibrary


def _perturb_output_layer(model, tok, requests, hparams, **kwargs):
    """A stand-in weight editor: every edit adds large seeded noise to the language model's output layer."""
    weight = model.opt_model.lm_head.weight
    with torch.no_grad():
        weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(len(requests))) * 10)
    return model, {}


@pytest.fixture
def perturbing(small_world, monkeypatch):
    """EasyEdit's table with the stand-in under ``Perturb``, and hparams selecting it."""
    alg_dict = importlib.import_module("easyeditor.util.alg_dict").ALG_MULTIMODAL_DICT
    monkeypatch.setitem(alg_dict, "Perturb", _perturb_output_layer)
    hparams = SimpleNamespace(**vars(toy_hparams(small_world, "LiveEdit")))
    hparams.alg_name = "Perturb"
    return hparams


def test_the_comparison_measures_locality_against_the_unedited_model(small_world, perturbing):
    """Guards: the comparison's locality compares with outputs of the unedited backbone taken before any edit (an
    "edited model against itself" locality would be 1.0 here)."""
    backbone = Backbone(lambda h: (small_world.load_model(), small_world.tokenizer()), small_world.easyedit_patches)
    settings = CompareSettings(eval_json=str(small_world.split("vqa_eval")), edits=[3])
    (row,) = compare([MethodRun("Perturb", hparams=perturbing)], backbone, settings, progress=False)
    assert row.status == "ok"
    assert row.metrics["locality_acc"] < 1.0 and row.metrics["multimodal_locality_acc"] < 1.0


def test_the_editor_api_measures_locality_against_the_unedited_model(small_world, perturbing):
    """Guards: ``MultimodalEditor``'s locality compares with the unedited model's outputs, in both modes."""
    from easyeditor import VQADataset

    with small_world.easyedit_patches():
        editor = MultimodalEditor(toy_hparams(small_world, "LiveEdit", archive=None))
        editor.alg_name, editor.apply_algo = "Perturb", _perturb_output_layer
        ds = VQADataset(str(small_world.split("vqa_eval")), size=3, config=editor.hparams)
        editor.hparams.inner_params = ["opt_model.lm_head.weight"]  # what sequential_edit=False must restore
        for sequential in (False, True):
            metrics, _, _ = editor.edit_dataset(ds, sequential_edit=sequential, verbose=False)
            for m in metrics:
                assert m["post"]["locality_acc"] < 1.0 and m["post"]["multimodal_locality_acc"] < 1.0, sequential
        editor.hparams.inner_params = []
        with pytest.raises(RuntimeError, match="changed the weight 'opt_model.lm_head.weight'"):
            editor.edit_dataset(ds, sequential_edit=False, verbose=False)  # it cannot know what to restore


# ------------------------------------------------------------------------------------------------ undo
def _digest(tensors) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _state_seen_by_each_edit(editor: MultimodalEditor, state, ds, sequential: bool) -> list:
    """``state()`` as each call of the method's editing entry begins, over ``edit_dataset``."""
    seen = []
    apply = editor.apply_algo

    def recording(*args, **kwargs):
        seen.append(state())
        return apply(*args, **kwargs)

    recording.__self__ = getattr(apply, "__self__", None)  # the executor undo restores, as on the bound method
    editor.apply_algo = recording
    try:
        editor.edit_dataset(ds, sequential_edit=sequential, verbose=False)
    finally:
        editor.apply_algo = apply
    return seen


@pytest.fixture(scope="module")
def archives(small_world, tmp_path_factory):
    return small_archives(tmp_path_factory, small_world)


def _editor(small_world, archives, method: str, archive: str) -> MultimodalEditor:
    hparams = toy_hparams(small_world, method)
    hparams.archive = str(archives / "models" / archive / "blip2")
    return MultimodalEditor(hparams)


@pytest.mark.parametrize(
    "method, archive",
    [("LiveEdit", "LiveEdit"), ("MEND", "MEND"), ("SERAC", "SERAC_MULTI")],
)
def test_single_editing_undoes_each_edit_before_the_next(small_world, archives, method, archive):
    """Guards: with ``sequential_edit=False`` every edit meets the unedited state (LiveEdit's library, MEND's edited
    weights, SERAC's memory); with ``sequential_edit=True`` the same edits accumulate, so the probe would see it."""
    from easyeditor import VQADataset

    with small_world.easyedit_patches(), baseline_fixes():  # the wheel's MEND executor cannot edit without them
        editor = _editor(small_world, archives, method, archive)
        ds = VQADataset(str(small_world.split("vqa_eval")), size=3, config=editor.hparams)
        executor = getattr(editor.apply_algo, "__self__", None)  # EasyEdit's stateful executors (MEND, SERAC)

        def state():
            if method == "LiveEdit":
                live = attached_editor(editor.model)
                return 0 if live is None else len(live.library)
            if method == "MEND":
                return _digest(editor.model.get_parameter(n) for n in editor.hparams.inner_params)
            return len(executor.alg.cache_inputs) if getattr(executor, "is_init", False) else 0

        single = _state_seen_by_each_edit(editor, state, ds, sequential=False)
        assert len(single) == 3 and len(set(single)) == 1, single
        assert state() == single[0]  # and the last edit was undone too
        sequential = _state_seen_by_each_edit(editor, state, ds, sequential=True)
        assert len(set(sequential)) == 3, sequential  # each edit changed what the next one meets
        if executor is not None and getattr(executor, "is_init", False):
            executor.reset_model()  # EasyEdit's executors keep the backbone they bound; let it go


# ------------------------------------------------------------------------------- one undo, on a stored library
def _arguments(records: list[dict]) -> dict:
    """``MultimodalEditor.edit``'s arguments for MMEdit records (image paths under the world's image folder)."""
    return {
        "prompts": [r["src"] for r in records],
        "targets": [r["alt"] for r in records],
        "image": [r["image"] for r in records],
        "rephrase_prompts": [r["rephrase"] for r in records],
        "rephrase_image": [r["image_rephrase"] for r in records],
    }


@pytest.fixture
def stored(small_world, archives, tmp_path, monkeypatch):
    """A ``MultimodalEditor`` whose LiveEdit library is a folder (``library_path``) already holding three experts,
    sealed in a shard file (edited by another editor and saved), and six requests of the eval split."""
    from easyeditor import VQADataset

    monkeypatch.chdir(tmp_path)  # MultimodalEditor writes logs/ into the working directory
    records = json.loads(small_world.split("vqa_eval").read_text())
    folder = tmp_path / "library"
    with small_world.easyedit_patches():
        maker = _editor(small_world, archives, "LiveEdit", "LiveEdit")
        maker.edit(**_arguments(records[:3]), sequential_edit=True, verbose=False)
        attached_editor(maker.model).save_library(folder)
        editor = _editor(small_world, archives, "LiveEdit", "LiveEdit")
        editor.hparams.library_path = str(folder)
        live = editor_for(editor.model, editor.hparams)
        ds = VQADataset(str(small_world.split("vqa_eval")), size=6, config=editor.hparams)
    requests = [scoring.request_from_item(item) for item in ds]
    yield editor, live, records, requests, folder
    live.library.close()


def _library_state(live, folder: Path) -> tuple:
    """Ids, tensors and the bytes of every shard file; and the ids a fresh reader of the folder finds."""
    shards = {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*"))}
    reader = ExpertLibrary()
    reader.load(folder, identity=live.identity())
    state = {k: v.clone() for k, v in live.library.state_dict().items() if k != "next_id"}  # ids are never reused
    return live.library.ids(), state, shards, reader.ids()


def _same_state(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and a[2] == b[2] and a[3] == b[3] and all(torch.equal(a[1][k], b[1][k]) for k in a[1])


def test_undo_removes_exactly_the_edits_experts_from_a_stored_library(small_world, stored):
    """Guards LiveEdit's one undo on a library folder that already holds experts: after a non-sequential edit through
    ``MultimodalEditor`` (undone after scoring), after the entry's returned ``weights_copy`` is called (EasyEdit main's
    ``restore_after_edit``) and after ``keep_original_weight=True`` edits (each undone by the next call), the stored
    experts are there with the same ids and tensors, in memory and for a fresh reader of the folder, and the shard
    files are byte for byte what they were.

    Seen failing when ``EditUndo.__call__`` ran ``self.editor.reset()`` instead of removing its ids (the three
    stored experts and their shard file were gone); and on the code before ``EditUndo``, where the wheel's entry
    returned ``{}`` (not callable) and ``keep_original_weight=True`` refused a library folder.
    """
    editor, live, records, requests, folder = stored
    before = _library_state(live, folder)
    assert before[0] == [0, 1, 2] and before[2]  # three stored experts, in a shard file

    with small_world.easyedit_patches():
        metrics, _, _ = editor.edit(**_arguments(records[3:5]), sequential_edit=False, verbose=False)
    assert len(metrics) == 2
    assert _same_state(_library_state(live, folder), before)

    _, undo = apply_liveedit_to_multimodal_model(editor.model, editor.tok, [requests[3]], editor.hparams)
    assert len(live.library) == 4 and callable(undo) and dict(undo) == {}  # no weight to copy back
    undo()
    undo()  # a second call finds nothing of its own left
    assert _same_state(_library_state(live, folder), before)

    apply_liveedit_to_multimodal_model(editor.model, editor.tok, [requests[4]], editor.hparams,
                                       keep_original_weight=True)  # fmt: skip
    assert len(live.library) == 4
    _, undo = apply_liveedit_to_multimodal_model(editor.model, editor.tok, [requests[5]], editor.hparams,
                                                 keep_original_weight=True)  # fmt: skip
    assert len(live.library) == 4  # the first temporary edit was undone before this one
    undo()
    assert _same_state(_library_state(live, folder), before)
