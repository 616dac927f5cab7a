"""The faiss pre-filter (``easyedit_liveedit.index.FaissPrefilter``) inside the expert library."""

from __future__ import annotations

import pytest
import torch

from easyedit_liveedit.index import FaissPrefilter
from easyedit_liveedit.liveedit.library import ExpertLibrary
from easyedit_liveedit.liveedit.networks import Experts, InputKeys

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
