"""The expert library on disk: shards, manifest, journal, load-time checks; compact dtypes; routing paths agree.

Crash safety under SIGKILL is in ``test_library_durability.py``; fuzzing of the loader in ``test_fuzz.py``.
"""

from __future__ import annotations

import json
import os
import resource

import pytest
import torch

from easyedit_liveedit.liveedit.library import ExpertLibrary
from easyedit_liveedit.liveedit.networks import Experts, InputKeys
from easyedit_liveedit.liveedit.storage import MANIFEST, LibraryFileError, read_safetensors

D, DM, R, K = 16, 8, 2, 2
IDENTITY = {"backbone": "Toy", "hidden_size": D, "rank": R, "networks": "abc"}


def experts(n: int, seed: int = 0, scale: float = 1.0) -> Experts:
    g = torch.Generator().manual_seed(seed)
    return Experts(*(scale * torch.randn(n, *shape, generator=g) for shape in ((K, DM), (K, DM), (R, D), (R, D))))


def input_keys(B: int, seed: int = 1) -> InputKeys:
    g = torch.Generator().manual_seed(seed)
    return InputKeys(
        psi=torch.randn(B, K, DM, generator=g),
        phi=torch.randn(B, K, DM, generator=g),
        sentinel=torch.randn(B, K, DM, generator=g) * 0.1,
        has_image=torch.ones(B, dtype=torch.bool),
    )


def same_state(a: ExpertLibrary, b: ExpertLibrary) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) and sa[k].dtype == sb[k].dtype for k in sa)


def shards(path) -> list:
    return sorted(path.glob("shard-*.safetensors"))


# ---------------------------------------------------------------- round trips
def test_an_open_library_commits_every_add_and_remove_across_shard_seals(tmp_path):
    """Guards: with ``open``, adds and removes survive a reopen whether they sit in sealed shards or in the journal,
    ids keep counting, and routing on the reopened library is identical."""
    lib = ExpertLibrary()
    lib.open(tmp_path / "lib", IDENTITY, shard_size=4)
    for i in range(5):
        lib.add(experts(3, seed=i), keys=[f"e{i}-{j}" for j in range(3)])  # sealed at 6 and 12; 3 in the journal
    lib.remove(4)  # sealed shard
    lib.remove(14)  # journal, the last row
    lib.close()
    assert len(shards(tmp_path / "lib")) == 2
    again = ExpertLibrary()
    again.open(tmp_path / "lib", IDENTITY, shard_size=4)
    assert same_state(lib, again) and again.ids() == [i for i in range(15) if i not in (4, 14)]
    assert again.has_key("e0-0") and not again.has_key("e1-1")  # id 4 was e1-1, removed
    keys = input_keys(3)
    assert lib.route(keys).report() == again.route(keys).report()
    assert again.add(experts(1, seed=9)) == [15]


def test_save_then_load_keeps_the_shards_memory_mapped(tmp_path):
    lib = ExpertLibrary()
    lib.add(experts(10))
    lib.save(tmp_path / "snap", IDENTITY, shard_size=4)
    loaded = ExpertLibrary()
    loaded.load(tmp_path / "snap", identity=IDENTITY)
    assert same_state(lib, loaded)
    assert len(loaded._frozen) == 3 and loaded._tail_size == 0  # shards are used where they lie
    h = torch.randn(2, 3, D)
    norm = torch.nn.LayerNorm(D)
    r1, r2 = lib.route(input_keys(2)), loaded.route(input_keys(2))
    assert torch.equal(lib.apply(h, r1, norm), loaded.apply(h, r2, norm))


def test_our_shards_are_standard_safetensors_both_ways(tmp_path):
    """Guards the claim that the shards are safetensors files: the reference package reads ours, we read its."""
    import safetensors.torch as safetensors_torch
    from safetensors import safe_open

    lib = ExpertLibrary(dtype=torch.bfloat16)
    lib.add(experts(5))
    lib.save(tmp_path / "lib", IDENTITY)
    (shard,) = shards(tmp_path / "lib")
    with safe_open(str(shard), framework="pt") as f:
        theirs = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    ours, _ = read_safetensors(shard)
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in ours)
    assert theirs["U"].dtype == torch.bfloat16
    reference = tmp_path / "reference.safetensors"
    tensors = {"a": torch.randn(3, 2), "b": torch.arange(5), "c": torch.randn(4).half()}
    safetensors_torch.save_file(tensors, str(reference))
    back, _ = read_safetensors(reference)
    assert all(torch.equal(back[k], v) for k, v in tensors.items())


# ---------------------------------------------------------------- damaged files are refused, naming them
def test_a_truncated_or_altered_shard_is_refused_naming_it(tmp_path):
    """Guards: a shard cut short or with one byte changed is refused by ``load`` and ``open``, naming the file; the
    library being loaded into is left as it was."""
    lib = ExpertLibrary()
    lib.add(experts(8))
    lib.save(tmp_path / "lib", IDENTITY, shard_size=4)
    first, second = shards(tmp_path / "lib")
    data = second.read_bytes()
    target = ExpertLibrary()
    target.add(experts(2, seed=7))
    before = target.state_dict()

    second.write_bytes(data[:-5])
    with pytest.raises(LibraryFileError, match=second.name):
        target.load(tmp_path / "lib", identity=IDENTITY)
    with pytest.raises(LibraryFileError, match="truncated"):
        ExpertLibrary().open(tmp_path / "lib", IDENTITY)
    with pytest.raises(LibraryFileError, match=second.name):  # size checks run without the hash too
        target.load(tmp_path / "lib", identity=IDENTITY, verify=False)

    altered = bytearray(data)
    altered[-3] ^= 0x40  # one bit of a factor, same size
    second.write_bytes(bytes(altered))
    with pytest.raises(LibraryFileError, match=f"{second.name}: SHA-256"):
        target.load(tmp_path / "lib", identity=IDENTITY)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_an_altered_or_foreign_manifest_is_refused(tmp_path):
    lib = ExpertLibrary()
    lib.add(experts(3))
    lib.save(tmp_path / "lib", IDENTITY)
    manifest = tmp_path / "lib" / MANIFEST
    body = json.loads(manifest.read_text())
    body["next_id"] = 1
    manifest.write_text(json.dumps(body))
    with pytest.raises(LibraryFileError, match="manifest.json: checksum"):
        ExpertLibrary().load(tmp_path / "lib")
    body["version"] = 99
    manifest.write_text(json.dumps(body))
    with pytest.raises(LibraryFileError, match="version 99"):
        ExpertLibrary().load(tmp_path / "lib")
    with pytest.raises(LibraryFileError, match="not an expert library"):
        ExpertLibrary().load(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(LibraryFileError, match="not empty and is not an expert library"):
        ExpertLibrary().open(tmp_path / "other", IDENTITY)


def test_another_editors_library_is_refused_naming_the_field(tmp_path):
    lib = ExpertLibrary()
    lib.add(experts(2))
    lib.save(tmp_path / "lib", IDENTITY)
    with pytest.raises(ValueError, match="rank=2"):
        ExpertLibrary().load(tmp_path / "lib", identity={**IDENTITY, "rank": 8})
    with pytest.raises(ValueError, match="networks="):
        ExpertLibrary().open(tmp_path / "lib", {**IDENTITY, "networks": "def"})
    with pytest.raises(ValueError, match="networks="):  # nor can a snapshot overwrite it
        lib.save(tmp_path / "lib", {**IDENTITY, "networks": "def"})


def test_a_torn_journal_tail_is_dropped_but_a_damaged_record_is_refused(tmp_path):
    """Guards the journal's rule: a record cut short at the end (an append that never returned) is not an edit and is
    dropped on open; a whole record that fails its CRC may be a committed edit and is refused, naming the journal."""
    lib = ExpertLibrary()
    lib.open(tmp_path / "lib", IDENTITY, shard_size=100)
    lib.add(experts(3))
    lib.close()
    (journal,) = (tmp_path / "lib").glob("journal-*.bin")
    whole = journal.read_bytes()
    record = len(whole) // 3
    journal.write_bytes(whole + whole[:record][: record // 2])  # half a fourth record
    torn = ExpertLibrary()
    torn.open(tmp_path / "lib", IDENTITY)
    assert torn.ids() == [0, 1, 2] and journal.stat().st_size == len(whole)
    torn.close()
    damaged = bytearray(whole)
    damaged[record + 40] ^= 1
    journal.write_bytes(bytes(damaged))
    with pytest.raises(LibraryFileError, match=f"{journal.name}: record at byte {record} fails its CRC"):
        ExpertLibrary().open(tmp_path / "lib", IDENTITY)


def test_a_creation_killed_before_its_manifest_can_be_opened_again(tmp_path):
    """Guards creation: a folder left with only the lock and the first empty journal (killed before the manifest was
    written) is still a library to ``open``, while a folder of someone else's files is refused."""
    folder = tmp_path / "lib"
    folder.mkdir()
    (folder / "lock").touch()
    (folder / "journal-000000.bin").touch()
    lib = ExpertLibrary()
    lib.open(folder, IDENTITY)
    lib.add(experts(1))
    lib.close()
    assert (folder / MANIFEST).exists()


def test_one_writer_at_a_time(tmp_path):
    first = ExpertLibrary()
    first.open(tmp_path / "lib", IDENTITY)
    with pytest.raises(BlockingIOError, match="open for writing in another process"):
        ExpertLibrary().open(tmp_path / "lib", IDENTITY)
    first.close()
    ExpertLibrary().open(tmp_path / "lib", IDENTITY)


# ---------------------------------------------------------------- compact storage
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_experts_are_stored_in_the_library_dtype_and_routed_in_fp32(tmp_path, dtype):
    """Guards: keys and factors are stored in ``dtype`` (half the bytes of fp32, on disk too) and routing computes in
    fp32 on the stored values: the same as fp32 routing over the keys rounded to ``dtype``."""
    made = experts(50)
    narrow = ExpertLibrary(dtype=dtype)
    narrow.add(made)
    rounded = ExpertLibrary(dtype=torch.float32)
    rounded.add(Experts(*(getattr(made, f).to(dtype).float() for f in ("psi", "phi", "U", "V"))))
    assert narrow.bytes_per_expert() - 29 == (rounded.bytes_per_expert() - 29) // 2  # 29: id, flag, digest, norm
    keys = input_keys(4)
    got, want = narrow.route(keys), rounded.route(keys)
    assert got.weights.dtype == torch.float32
    assert got.report() == want.report() and got.slots.numel() > 0
    narrow.save(tmp_path / "n", IDENTITY)
    rounded.save(tmp_path / "r", IDENTITY)
    assert shards(tmp_path / "n")[0].stat().st_size < 0.6 * shards(tmp_path / "r")[0].stat().st_size


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_narrow_screen_never_drops_an_expert_the_fp32_filter_keeps(dtype):
    """Guards the screen of narrow keys (``_kept_by_scan``): with the bar placed among the experts' similarities,
    where dozens sit within the narrow dtype's rounding of it, the narrow library keeps exactly the experts the
    fp32 filter keeps over the same (rounded) keys."""
    g = torch.Generator().manual_seed(3)
    n, k, dm = 4000, 4, 64
    keys = (torch.randn(n, k, dm, generator=g) + 0.5).to(dtype)  # a common direction: similarities far from 0
    query = torch.randn(1, k, dm, generator=g) + 0.5
    exact = (query.flatten(1) @ keys.float().flatten(1).T)[0] / (k * dm**0.5)
    band = torch.finfo(dtype).eps * keys.float().flatten(1).norm(dim=1).mean() * query.norm() / (k * dm**0.5)
    for rank in (500, 2000):
        bar = exact.sort(descending=True).values[rank]
        sentinel = query * (bar * k * dm**0.5 / query.flatten().dot(query.flatten()))
        inputs = InputKeys(query, query, sentinel, torch.ones(1, dtype=torch.bool))
        narrow, wide = ExpertLibrary(dtype=dtype), ExpertLibrary(dtype=torch.float32)
        made = Experts(keys, keys, torch.zeros(n, 1, 1), torch.zeros(n, 1, 1))
        narrow.add(made)
        wide.add(Experts(*(t.float() for t in (made.psi, made.phi, made.U, made.V))))
        got, want = narrow.route(inputs).expert_ids, wide.route(inputs).expert_ids
        near = int(((exact - bar).abs() < band).sum())  # experts within the dtype's rounding of the bar
        assert near >= 20 and abs(len(want) - rank) < 5
        assert got.tolist() == want.tolist(), rank


# ---------------------------------------------------------------- bad experts never enter
def test_a_non_finite_expert_is_refused_and_nothing_is_committed(tmp_path):
    """Guards: a NaN or inf in any incoming factor is refused with an error naming the tensor and the row; neither
    the library nor its folder changes."""
    lib = ExpertLibrary()
    lib.open(tmp_path / "lib", IDENTITY)
    lib.add(experts(2))
    files = {p.name: p.read_bytes() for p in (tmp_path / "lib").iterdir()}
    bad = experts(3, seed=5)
    bad.V[1, 0, 3] = float("nan")
    with pytest.raises(ValueError, match=r"V of expert\(s\) \[1\]"):
        lib.add(bad)
    huge = experts(1, seed=6, scale=1e30)  # finite in fp32, inf once stored in fp16
    half = ExpertLibrary(dtype=torch.float16)
    with pytest.raises(ValueError, match="not finite"):
        half.add(huge)
    lib.add(experts(1), keys=["k"])
    with pytest.raises(ValueError, match="already committed under key 'k'"):
        lib.add(experts(1), keys=["k"])
    assert lib.ids() == [0, 1, 2] and len(half) == 0
    lib.close()
    again = ExpertLibrary()
    again.load(tmp_path / "lib", identity=IDENTITY)
    assert again.ids() == [0, 1, 2]
    assert {p.name for p in (tmp_path / "lib").iterdir()} == set(files)


# ---------------------------------------------------------------- routing paths agree
def test_the_chunked_scan_equals_one_big_matmul():
    """Guards: scanning the keys in chunks (across loaded shards and the tail) keeps exactly the experts the
    unchunked filter keeps, with the same weights."""
    lib = ExpertLibrary(chunk_bytes=1 << 30)
    lib.add(experts(300))
    small = ExpertLibrary(chunk_bytes=3 * 4 * K * DM)  # 3 rows per chunk
    small.load_state_dict(lib.state_dict())
    keys = input_keys(5)
    big, chunked = lib.route(keys), small.route(keys)
    assert big.report() == chunked.report() and big.slots.numel() > 5


class ListPrefilter:
    """A stand-in index that proposes a fixed set of ids (plus some that do not exist)."""

    def __init__(self, propose: list[int]) -> None:
        self.propose, self.added, self.removed = propose, [], []

    def add(self, ids, keys):
        self.added += ids.tolist()

    def remove(self, ids):
        self.removed += ids.tolist()

    def reset(self):
        self.added, self.removed = [], []

    def ready(self):
        return True

    def candidates(self, queries, thresholds):
        return [torch.tensor(self.propose + [10_000]) for _ in range(len(queries))]


def test_prefilter_candidates_are_rechecked_by_the_exact_filter():
    """Guards: with a prefilter, an expert fires only if the index proposed it AND it passes the exact hard filter
    (proposing everything gives exact routing; proposing junk fires nothing extra)."""
    lib = ExpertLibrary()
    lib.add(experts(40))
    keys = input_keys(3)
    exact = lib.route(keys).report()
    everything = ListPrefilter(list(range(40)))
    lib.set_prefilter(everything, min_experts=1)
    assert everything.added == list(range(40))
    assert lib.route(keys).report() == exact
    half = ListPrefilter(list(range(0, 40, 2)))
    lib.set_prefilter(half, min_experts=1)
    got = lib.route(keys).report()
    for want_row, got_row in zip(exact, got, strict=True):
        assert [i for i, _ in got_row] == [i for i, _ in want_row if i % 2 == 0]
    lib.remove(2)
    assert half.removed == [2] and all(2 not in [i for i, _ in row] for row in lib.route(keys).report())
    lib.set_prefilter(half, min_experts=1000)  # below the size where it is consulted: exact scan
    got = lib.route(keys).report()
    assert [sorted(i for i, _ in row) for row in got] == [sorted(i for i, _ in row if i != 2) for row in exact]


# ---------------------------------------------------------------- a million experts
def test_a_million_experts_load_memory_mapped(tmp_path):
    """Guards: loading a library of 10^6 experts maps its shards instead of reading them into memory: every factor
    tensor lies inside a file mapping of its shard (``/proc/self/maps``), resident memory grows by less than the
    shards' bytes, and routing over it works."""
    n, k, dm, r, d = 1_000_000, 1, 8, 1, 16
    lib = ExpertLibrary(dtype=torch.float16)
    g = torch.Generator().manual_seed(0)
    phi = torch.randn(n, k, dm, generator=g).half()
    lib.add(Experts(phi, phi, torch.randn(n, r, d, generator=g).half(), torch.randn(n, r, d, generator=g).half()))
    lib.save(tmp_path / "big", IDENTITY, shard_size=1 << 17)
    total = sum(p.stat().st_size for p in shards(tmp_path / "big"))
    del lib, phi
    loaded = ExpertLibrary()
    before = _rss_bytes()
    loaded.load(tmp_path / "big", identity=IDENTITY, verify=False)
    grown = _rss_bytes() - before
    assert len(loaded) == n and total > 80e6
    assert grown < total / 2, (grown, total)  # ids are copied (8 B each) and ids/keys pages touched; factors not
    mapped = _file_mappings()
    for segment in loaded._frozen:
        for name in ("psi", "phi", "U", "V"):
            address = segment[name].data_ptr()
            assert any(lo <= address < hi and "shard-" in path for lo, hi, path in mapped), name
    routing = loaded.route(
        InputKeys(*(torch.randn(2, k, dm) for _ in range(3)), has_image=torch.ones(2, dtype=torch.bool))
    )
    assert routing.slots.numel() > 0


def _file_mappings() -> list[tuple[int, int, str]]:
    """``(start, end, file)`` of each file-backed mapping of this process."""
    found = []
    with open(f"/proc/{os.getpid()}/maps") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 6:
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                found.append((lo, hi, fields[5]))
    return found


def _rss_bytes() -> int:
    """Current resident set size (Linux /proc), not the peak that ``resource`` reports."""
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def test_a_loaded_library_moves_into_memory_and_casts_like_a_built_one(tmp_path):
    """Guards ``to``: loaded (memory-mapped) segments and the tail merge into memory, cast to the new dtype, and route
    exactly as a library built in that dtype; an open library refuses to change its stored dtype."""
    made = experts(30)
    lib = ExpertLibrary()
    lib.add(made)
    lib.save(tmp_path / "lib", IDENTITY, shard_size=8)
    loaded = ExpertLibrary()
    loaded.load(tmp_path / "lib", identity=IDENTITY)
    loaded.add(experts(5, seed=4))
    loaded.to(dtype=torch.bfloat16)
    built = ExpertLibrary(dtype=torch.bfloat16)
    built.add(made)
    built.add(experts(5, seed=4))
    assert loaded._frozen == [] and same_state(loaded, built)
    assert loaded.route(input_keys(3)).report() == built.route(input_keys(3)).report()
    held = ExpertLibrary()
    held.open(tmp_path / "held", IDENTITY)
    held.add(made)
    with pytest.raises(ValueError, match="open on"):
        held.to(dtype=torch.float16)
    held.close()
