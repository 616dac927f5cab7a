"""One scoring module for the comparison and the editor API, and undo that undoes, on the small toy world.

- Locality is measured against the unedited model through both paths: a stand-in editor that perturbs the language
  model's output layer must show locality below 1 in the comparison's rows and in ``MultimodalEditor``'s metrics.
- ``MultimodalEditor.edit_dataset(sequential_edit=False)`` undoes each method's edit before the next one: every
  edit of LiveEdit, MEND and SERAC meets the unedited state, while sequential editing accumulates.
"""

from __future__ import annotations

import hashlib
import importlib
from types import SimpleNamespace

import pytest
import torch
from helpers import small_archives, toy_hparams

from easyedit_liveedit import MultimodalEditor
from easyedit_liveedit.bench.engine import Backbone, CompareSettings, MethodRun, compare
from easyedit_liveedit.easyedit.compat import baseline_fixes
from easyedit_liveedit.easyedit.entry import attached_editor


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
                live = attached_editor(editor.model, editor.hparams)
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
