"""The faiss pre-filter (``easyedit_liveedit.index.FaissPrefilter``) inside the expert library, by hand and from the
hparams' ``index`` keys."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import torch
import yaml
from helpers import small_archives, toy_hparams

from easyedit_liveedit import LiveEditMultimodalHparams, LiveEditMultimodalTrainingHparams
from easyedit_liveedit.bench import archives
from easyedit_liveedit.easyedit.entry import editor_for, release_editor
from easyedit_liveedit.index import FaissPrefilter
from easyedit_liveedit.liveedit.library import ExpertLibrary
from easyedit_liveedit.liveedit.networks import Experts, InputKeys
from easyedit_liveedit.toyworld.layout import PROJECT_ROOT

K, DM = 2, 16


def clustered(n: int, seed: int = 0) -> tuple[Experts, InputKeys]:
    """Keys around 20 centres (as edits about the same images are), and 6 inputs near some of the centres."""
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(20, K, DM, generator=g)
    phi = centres[torch.randint(0, 20, (n,), generator=g)] + torch.randn(n, K, DM, generator=g)
    experts = Experts(phi, phi.clone(), torch.zeros(n, 1, 1), torch.zeros(n, 1, 1))
    query = centres[:6] + 0.5 * torch.randn(6, K, DM, generator=g)
    keys = InputKeys(query, query, 0.7 * query, torch.ones(6, dtype=torch.bool))
    return experts, keys


def kept(library: ExpertLibrary, keys: InputKeys) -> list[list[int]]:
    return [sorted(i for i, _ in row) for row in library.route(keys).report()]


def test_probing_every_list_gives_exact_routing_and_fewer_lists_only_lose_experts():
    """Guards: candidates are re-checked exactly, so with every list probed routing equals the exact scan, and with
    fewer lists it keeps a subset of the exact experts (a recall loss, never a wrong expert)."""
    experts, keys = clustered(3000)
    library = ExpertLibrary()
    library.add(experts)
    exact = kept(library, keys)
    assert sum(map(len, exact)) > 100
    prefilter = FaissPrefilter(nlist=16, nprobe=16, train_size=1024, threads=1)
    library.set_prefilter(prefilter, min_experts=1)
    assert prefilter.ready() and len(prefilter) == 3000
    assert kept(library, keys) == exact
    prefilter._index.nprobe = 1
    partial = kept(library, keys)
    assert all(set(p) <= set(e) for p, e in zip(partial, exact, strict=True))
    assert sum(map(len, partial)) < sum(map(len, exact))


def test_the_index_follows_adds_and_removes_and_trains_once_it_has_enough_keys():
    experts, keys = clustered(3000, seed=1)
    library = ExpertLibrary()
    prefilter = FaissPrefilter(nlist=16, nprobe=16, train_size=2000, threads=1)
    library.set_prefilter(prefilter, min_experts=1)
    library.add(Experts(*(t[:1500] for t in (experts.psi, experts.phi, experts.U, experts.V))))
    assert not prefilter.ready() and len(prefilter) == 1500  # buffered: the library scans exactly meanwhile
    library.remove(3)
    library.add(Experts(*(t[1500:] for t in (experts.psi, experts.phi, experts.U, experts.V))))
    assert prefilter.ready() and len(prefilter) == 2999
    with_index = kept(library, keys)
    library.set_prefilter(None)
    assert with_index == kept(library, keys)
    library.set_prefilter(prefilter, min_experts=1)
    victim = with_index[0][0]
    library.remove(victim)
    assert len(prefilter) == 2998 and victim not in kept(library, keys)[0]
    library.reset()
    assert len(prefilter) == 0 and not prefilter.ready()


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="nprobe"):
        FaissPrefilter(nprobe=0)
    with pytest.raises(ValueError, match="train_size"):
        FaissPrefilter(nlist=64, train_size=10)


# ---------------------------------------------------------------- by configuration (the hparams' `index` keys)
FAISS_KEYS = {"index": "faiss", "index_min_experts": 1, "index_nlist": 2, "index_nprobe": 2, "index_train_size": 4,
              "index_threads": 1}  # fmt: skip


def test_the_index_keys_reach_the_library_and_an_archive_trained_exact_loads(small_world, tmp_path_factory):
    """Guards the pre-filter by configuration: ``index: faiss`` and its ``index_*`` keys in the editing YAML reach the
    editor's library as a ``FaissPrefilter`` with those parameters, consulted from ``index_min_experts`` on; the
    default ``exact`` attaches none; and the session's archive, trained under ``exact``, loads under ``faiss`` (the
    keys change no network). Seen failing with the ``configure_index`` call removed from ``LiveEdit.__init__`` (no
    prefilter), and with the ``index`` role counted among the compared ones in ``LiveEditConfig.mismatches`` (the
    archive refused: "trained with index='exact'")."""
    archive = small_archives(tmp_path_factory, small_world) / "models" / "LiveEdit" / "blip2"
    model = small_world.load_model()
    exact = editor_for(model, toy_hparams(small_world, "LiveEdit", archive=str(archive)))
    assert exact.config.index == "exact" and exact.library._prefilter is None
    release_editor(model)
    editor = editor_for(model, toy_hparams(small_world, "LiveEdit", archive=str(archive), **FAISS_KEYS))
    prefilter = editor.library._prefilter
    assert isinstance(prefilter, FaissPrefilter) and editor.library.prefilter_min == 1
    assert (prefilter.nlist, prefilter.nprobe, prefilter.train_size) == (2, 2, 4)
    release_editor(model)


def test_index_faiss_without_faiss_names_the_key_and_how_to_install(tmp_path, monkeypatch):
    """Guards: where faiss is not installed, ``index: faiss`` is refused when the YAML is loaded, naming the file, the
    key and the install command (not at the first edit, after the backbone was loaded). Seen failing with the
    ``check_index`` call removed from the hparams' ``__post_init__``."""
    base = yaml.safe_load((PROJECT_ROOT / "hparams" / "LiveEdit" / "blip2.yaml").read_text())
    path = tmp_path / "faiss.yaml"
    path.write_text(yaml.safe_dump({**base, **FAISS_KEYS}))
    assert LiveEditMultimodalHparams.from_hparams(path).index == "faiss"  # faiss is installed here
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "faiss" else find_spec(name, *a))
    message = r"faiss.yaml: key 'index' is 'faiss', but faiss is not installed; pip install faiss-cpu"
    with pytest.raises(ValueError, match=message):
        LiveEditMultimodalHparams.from_hparams(path)


def test_the_index_keys_are_not_inputs_of_training(tmp_path):
    """An archive's provenance record (what the runner compares before reusing or unpacking an archive) and the
    config comparison of archives leave the ``index`` keys out: they change no trained weight."""
    training = LiveEditMultimodalTrainingHparams.from_hparams(PROJECT_ROOT / "hparams/TRAINING/LiveEdit/blip2.yaml")
    data = tmp_path / "train.json"
    data.write_text("[]")
    faiss = dataclasses.replace(training, **FAISS_KEYS)
    assert archives.provenance(faiss, data, 1) == archives.provenance(training, data, 1)
    assert faiss.mismatches(training.config_dict()) == []
