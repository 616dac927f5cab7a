"""ExpertLibrary: growth, ids, persistence, routing per input, and the expert formula."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from easyedit_liveedit.liveedit.backbone import BackboneAdapter
from easyedit_liveedit.liveedit.config import LiveEditConfig
from easyedit_liveedit.liveedit.library import ExpertLibrary
from easyedit_liveedit.liveedit.model import LiveEditModel
from easyedit_liveedit.liveedit.networks import Experts, InputKeys, LiveEditNetwork

D, DM, R, K = 16, 8, 2, 2


def random_experts(n: int, seed: int = 0) -> Experts:
    g = torch.Generator().manual_seed(seed)
    return Experts(
        psi=torch.randn(n, K, DM, generator=g),
        phi=torch.randn(n, K, DM, generator=g),
        U=torch.randn(n, R, D, generator=g),
        V=torch.randn(n, R, D, generator=g),
    )


def random_keys(B: int, seed: int = 1, has_image=None) -> InputKeys:
    g = torch.Generator().manual_seed(seed)
    has_image = torch.ones(B, dtype=torch.bool) if has_image is None else torch.tensor(has_image)
    return InputKeys(
        psi=torch.randn(B, K, DM, generator=g),
        phi=torch.randn(B, K, DM, generator=g),
        sentinel=torch.randn(B, K, DM, generator=g) * 0.1,  # weak bar: several experts pass
        has_image=has_image,
    )


def seeded_norm() -> nn.LayerNorm:
    torch.manual_seed(3)
    norm = nn.LayerNorm(D)
    with torch.no_grad():  # non-trivial affine so the test sees it
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    return norm


# ---------------------------------------------------------------- growth and ids
def test_add_returns_sequential_ids():
    lib = ExpertLibrary()
    assert len(lib) == 0
    assert lib.add(random_experts(3)) == [0, 1, 2]
    assert lib.add(random_experts(2, seed=5)) == [3, 4]
    assert len(lib) == 5 and lib.ids() == [0, 1, 2, 3, 4]


def test_capacity_doubles_and_storage_is_reused_until_full():
    lib = ExpertLibrary(initial_capacity=4)
    experts = [random_experts(1, seed=i) for i in range(25)]
    lib.add(experts[0])
    assert lib.capacity == 4
    storage = lib._tail["U"].data_ptr()
    for e in experts[1:4]:
        lib.add(e)
    assert lib.capacity == 4 and lib._tail["U"].data_ptr() == storage  # appended in place
    lib.add(experts[4])
    assert lib.capacity == 8
    capacities = []
    for e in experts[5:]:
        lib.add(e)
        capacities.append(lib.capacity)
    assert sorted(set(capacities)) == [8, 16, 32]
    # contents survive every regrowth, in order
    state = lib.state_dict()
    assert torch.equal(state["U"], torch.cat([e.U for e in experts]))
    assert torch.equal(state["psi"], torch.cat([e.psi for e in experts]))


def test_a_large_batch_grows_capacity_in_one_step():
    lib = ExpertLibrary(initial_capacity=4)
    lib.add(random_experts(20))
    assert len(lib) == 20 and lib.capacity == 32


def test_remove_keeps_every_other_id_bound_to_its_expert():
    lib = ExpertLibrary()
    experts = random_experts(5)
    lib.add(experts)
    lib.remove(1)
    assert len(lib) == 4 and sorted(lib.ids()) == [0, 2, 3, 4]
    state = lib.state_dict()
    for row, expert_id in enumerate(state["ids"].tolist()):
        assert torch.equal(state["U"][row], experts.U[expert_id])
        assert torch.equal(state["phi"][row], experts.phi[expert_id])
    lib.remove(4)  # the last row, no move needed
    assert sorted(lib.ids()) == [0, 2, 3]
    with pytest.raises(KeyError):
        lib.remove(1)
    assert lib.add(random_experts(1, seed=9)) == [5]  # ids are never reused


def test_reset_forgets_everything():
    lib = ExpertLibrary()
    lib.add(random_experts(3))
    lib.reset()
    assert len(lib) == 0 and lib.ids() == []
    routing = lib.route(random_keys(2))
    assert routing.slots.numel() == 0 and routing.weights.shape == (2, 0)
    assert lib.add(random_experts(1)) == [0]


def test_add_rejects_mismatched_shapes():
    lib = ExpertLibrary()
    lib.add(random_experts(1))
    bad = random_experts(1)
    with pytest.raises(ValueError, match="U"):
        lib.add(Experts(psi=bad.psi, phi=bad.phi, U=torch.randn(1, R + 1, D), V=bad.V))


def test_bytes_per_expert():
    lib = ExpertLibrary()
    assert lib.bytes_per_expert() == 0
    lib.add(random_experts(2))
    assert lib.bytes_per_expert() == 4 * (2 * K * DM + 2 * R * D) + 8 + 1 + 16 + 4  # id, flag, digest, norm


# ---------------------------------------------------------------- persistence
def test_save_load_round_trip_is_bit_exact(tmp_path):
    lib = ExpertLibrary()
    lib.add(random_experts(6))
    lib.remove(2)
    path = tmp_path / "library"
    lib.save(path)
    loaded = ExpertLibrary()
    loaded.load(path)
    before, after = lib.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
    keys, norm = random_keys(3), seeded_norm()
    h = torch.randn(3, 5, D)
    r1, r2 = lib.route(keys), loaded.route(keys)
    assert r1.report() == r2.report()
    assert torch.equal(lib.apply(h, r1, norm), loaded.apply(h, r2, norm))
    assert loaded.add(random_experts(1)) == [6]  # next_id survives too


def test_empty_library_round_trip(tmp_path):
    path = tmp_path / "empty"
    ExpertLibrary().save(path)
    loaded = ExpertLibrary()
    loaded.load(path)
    assert len(loaded) == 0 and loaded.bytes_per_expert() == 0


def test_load_state_dict_rejects_duplicate_ids():
    lib = ExpertLibrary()
    lib.add(random_experts(2))
    state = lib.state_dict()
    state["ids"] = torch.tensor([0, 0])
    with pytest.raises(ValueError, match="unique"):
        ExpertLibrary().load_state_dict(state)


# ---------------------------------------------------------------- routing and apply
def test_apply_with_zero_experts_is_the_identity():
    h = torch.randn(2, 5, D)
    lib = ExpertLibrary()
    assert torch.equal(lib.apply(h, lib.route(random_keys(2)), seeded_norm()), h)
    # a library where no expert clears the sentinel behaves the same
    lib.add(random_experts(4))
    keys = random_keys(2)
    keys = InputKeys(psi=keys.psi, phi=keys.phi, sentinel=keys.phi * 100, has_image=keys.has_image)
    routing = lib.route(keys)
    assert routing.slots.numel() == 0
    assert torch.equal(lib.apply(h, routing, seeded_norm()), h)


def test_apply_one_expert_matches_the_formula_written_out():
    torch.manual_seed(0)
    experts = random_experts(1)
    lib = ExpertLibrary()
    lib.add(experts)
    keys = InputKeys(  # visual key equal to the expert's, sentinel orthogonal-ish and small: kept
        psi=torch.randn(1, K, DM),
        phi=experts.phi.clone(),
        sentinel=torch.zeros(1, K, DM),
        has_image=torch.tensor([True]),
    )
    routing = lib.route(keys)
    assert routing.report()[0][0][0] == 0
    norm = seeded_norm()
    h = torch.randn(1, 3, D)
    out = lib.apply(h, routing, norm)

    # expected, by hand: a = sim(psi_in, psi_0); single kept expert -> softmax = 1, w = sigmoid(a)
    a = sum(float(keys.psi[0, j] @ experts.psi[0, j]) for j in range(K)) / K / math.sqrt(DM)
    w = 1.0 / (1.0 + math.exp(-a))
    assert routing.weights[0, 0].item() == pytest.approx(w, rel=1e-6)
    expected = h.clone()
    for t in range(3):
        row = h[0, t].tolist()
        mean = sum(row) / D
        var = sum((x - mean) ** 2 for x in row) / D
        x = [
            (v - mean) / math.sqrt(var + norm.eps) * norm.weight[i].item() + norm.bias[i].item()
            for i, v in enumerate(row)
        ]
        for r in range(R):
            act = max(0.0, sum(x[i] * experts.U[0, r, i].item() for i in range(D)))
            for i in range(D):
                expected[0, t, i] += w * act * experts.V[0, r, i].item()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_batch_routing_equals_routing_one_input_at_a_time():
    lib = ExpertLibrary()
    lib.add(random_experts(10))
    keys = random_keys(4, has_image=[True, True, False, True])
    norm, h = seeded_norm(), torch.randn(4, 6, D)
    routing = lib.route(keys)
    report = routing.report()
    out = lib.apply(h, routing, norm)
    assert report[2] == []  # a text-only input fires nothing
    assert torch.equal(out[2], h[2])
    assert sum(len(row) for row in report) > 3  # the test routes something
    for b in range(4):
        one = InputKeys(*(getattr(keys, f)[b : b + 1] for f in ("psi", "phi", "sentinel", "has_image")))
        single = lib.route(one)
        got = report[b]
        want = single.report()[0]
        assert [i for i, _ in got] == [i for i, _ in want]
        assert [w for _, w in got] == pytest.approx([w for _, w in want], abs=1e-6)
        torch.testing.assert_close(out[b : b + 1], lib.apply(h[b : b + 1], single, norm))


def test_route_keeps_exactly_the_experts_above_the_sentinel():
    lib = ExpertLibrary()
    e = random_experts(3)
    # expert 0 aligned with the input's visual key, expert 1 anti-aligned, expert 2 at the sentinel's level
    phi_in = torch.ones(1, K, DM)
    phi = torch.stack([torch.ones(K, DM), -torch.ones(K, DM), 0.5 * torch.ones(K, DM)])
    lib.add(Experts(psi=e.psi, phi=phi, U=e.U, V=e.V))
    keys = InputKeys(
        psi=torch.randn(1, K, DM), phi=phi_in, sentinel=0.5 * torch.ones(1, K, DM), has_image=torch.tensor([True])
    )
    routing = lib.route(keys)
    assert [i for i, _ in routing.report()[0]] == [0]
    assert routing.weights[0, 0] > 0


def test_stale_routing_is_refused():
    lib = ExpertLibrary()
    lib.add(random_experts(3))
    routing = lib.route(random_keys(1))
    lib.add(random_experts(1, seed=4))
    with pytest.raises(RuntimeError, match="stale"):
        lib.apply(torch.randn(1, 2, D), routing, seeded_norm())


def test_with_the_network_end_to_end_in_fp16():
    torch.manual_seed(0)
    config = LiveEditConfig(cross_attn_dim=DM, num_heads=2, rank=R, num_key_slots=K, num_sentinel_tokens=3)
    net = LiveEditNetwork(D, config)
    h = torch.randn(2, 8, D)
    image = torch.zeros(2, 8, dtype=torch.bool)
    image[:, 1:4] = True
    prompt = torch.zeros_like(image)
    prompt[:, 4:6] = True
    answer = torch.zeros_like(image)
    answer[:, 6:] = True
    lib = ExpertLibrary()
    with torch.no_grad():
        lib.add(net.make_experts(h, image, prompt, answer))
        keys = net.input_keys(h.half(), image, prompt)
        routing = lib.route(keys)
        out = lib.apply(h.half(), routing, net.expert_norm)
    assert out.dtype == torch.float16 and out.shape == (2, 8, D) and torch.isfinite(out).all()
    assert len(routing.report()) == 2


# ---------------------------------------------------------------- one device
def tensors_of(value: object, name: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor in ``value``, through dicts, lists and tuples, named by its path from ``name``."""
    if isinstance(value, torch.Tensor):
        yield name, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from tensors_of(item, f"{name}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from tensors_of(item, f"{name}[{i}]")


def off_device(library: ExpertLibrary) -> list[str]:
    """The library's tensor attributes (found through ``vars()``, so a new one is covered) not on its device."""
    found = [(f"{attr}{path}", t) for attr, value in vars(library).items() for path, t in tensors_of(value, "")]
    assert any(name.startswith("_ids") for name, _ in found)  # the enumeration sees the bookkeeping
    return [f"{name} on {t.device}" for name, t in found if t.device != library.device]


def test_every_tensor_of_the_library_lives_on_its_device_after_add_load_and_to(tmp_path):
    """Guards one device: after ``add``, ``load``, ``open``, ``to`` and ``load_state_dict`` every tensor attribute
    (ids, live flags, key digests, keys, factors, key norms) is on ``library.device``. The ``meta`` device stands in
    for a GPU (nothing is computed there). Seen failing with ``_clear`` making the ids and live flags on the CPU
    and ``_set_bookkeeping`` writing them there (the code before: a loaded library kept its ids on the CPU beside rows
    on the model's device), and with ``_replace`` keeping a loaded segment's key digests on the CPU."""
    meta = torch.device("meta")
    made = ExpertLibrary(device="meta")
    made.add(random_experts(3))  # experts made on the CPU are copied to the library's device
    assert made.device == meta and off_device(made) == []
    source = ExpertLibrary()
    source.add(random_experts(5))
    source.remove(1)
    source.save(tmp_path / "library")
    assert source.device == torch.device("cpu") and off_device(source) == []
    loaded = ExpertLibrary()
    loaded.load(tmp_path / "library", map_location="meta")
    assert loaded.device == meta and len(loaded) == 4 and off_device(loaded) == []
    loaded.add(random_experts(2, seed=3))
    assert off_device(loaded) == []
    opened = ExpertLibrary()
    opened.open(tmp_path / "library", identity={}, map_location="meta")
    assert opened.device == meta and off_device(opened) == []
    opened.close()
    source.to("meta")
    assert source.device == meta and off_device(source) == []
    restored = ExpertLibrary(device="meta")
    restored.load_state_dict(ExpertLibrary().state_dict() | {"next_id": torch.tensor(0)})
    assert restored.device == torch.device("cpu") and off_device(restored) == []  # follows the state's tensors


class TinyDecoder(nn.Module):
    """A stand-in backbone: two decoder layers of width ``D``; ``quantized`` gives layer 1 an int8 weight first (as
    bitsandbytes' 8-bit linear layers hold theirs) beside an fp16 norm."""

    def __init__(self, quantized: bool = False, norm: bool = True) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(D, D), nn.Module()])
        if quantized:
            self.layers[1].weight = nn.Parameter(torch.zeros(D, D, dtype=torch.int8), requires_grad=False)
        if norm:
            self.layers[1].norm = nn.LayerNorm(D).to(torch.float16)


class TinyAdapter(BackboneAdapter):
    """What ``LiveEditModel.__init__`` asks of a backbone; nothing here runs a forward pass."""

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return model.layers

    def language_model(self, model: nn.Module) -> nn.Module:
        return model

    def hidden_size(self, model: nn.Module) -> int:
        return D

    def layout(self, model, samples, attention_mask):
        raise NotImplementedError

    def prompt_embeddings(self, model, samples):
        raise NotImplementedError

    def tokenizer(self, model):
        raise NotImplementedError


TINY_CONFIG = LiveEditConfig(edit_layer=1, cross_attn_dim=DM, num_heads=2, rank=R, num_key_slots=K,
                             num_sentinel_tokens=4)  # fmt: skip


def test_the_library_follows_the_networks_when_the_editor_moves():
    """Guards one device through ``LiveEditModel``: the library is made on the networks' device, and ``to()`` on the
    editor moves it with them. Seen failing with ``LiveEditModel._apply`` removed (the library stayed on the CPU)."""
    editor = LiveEditModel(TinyDecoder(), TINY_CONFIG, TinyAdapter())
    editor.library.add(random_experts(2))
    assert editor.library.device == next(editor.net.parameters()).device == torch.device("cpu")
    editor.to("meta")
    assert editor.library.device == torch.device("meta") and off_device(editor.library) == []


# ---------------------------------------------------------------- storage dtype
def test_a_quantized_backbone_stores_experts_in_its_floating_compute_dtype():
    """Guards the storage dtype: an edit layer whose first parameter is int8 (an 8-bit backbone) stores experts in its
    floating compute dtype (fp16, its norm's), and a non-floating dtype is refused, naming it and what to set. Seen
    failing with the storage dtype read from the layer's first parameter (``next(layer.parameters()).dtype``, the code
    before: int8, whose experts hold whole numbers only)."""
    editor = LiveEditModel(TinyDecoder(quantized=True), TINY_CONFIG, TinyAdapter())
    assert editor.library.dtype == torch.float16
    editor.library.add(random_experts(1))
    assert editor.library.experts([0]).U.dtype == torch.float16
    with pytest.raises(ValueError, match=r"must be floating, got torch.int8 .*library_dtype"):
        LiveEditModel(TinyDecoder(), TINY_CONFIG, TinyAdapter(), library_dtype=torch.int8)
    with pytest.raises(ValueError, match=r"decoder layer 1 has no floating parameter.*library_dtype"):
        LiveEditModel(TinyDecoder(quantized=True, norm=False), TINY_CONFIG, TinyAdapter())
    with pytest.raises(ValueError, match=r"ExpertLibrary.to: .*must be floating, got torch.uint8"):
        ExpertLibrary().to(dtype=torch.uint8)
