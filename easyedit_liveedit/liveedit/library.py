"""The expert library: every edit LiveEdit has made, and routing of inputs to it.

``ExpertLibrary`` owns all edit state (nothing lives at module level): per expert its edit-side keys
``psi, phi (k, d_m)`` and factors ``U, V (r, d)``, stored in one dtype (``dtype``: the backbone's, so bf16/fp16 halve
the bytes of fp32; routing math is always fp32). No request and no image is kept: only a 16-byte digest of an
optional edit key, so that a resumed run can tell which edits it already committed.

Rows: experts loaded from a library folder stay in their memory-mapped shards (read-only segments); new experts go
to an in-memory tail whose capacity doubles when full (amortised O(1) ``add``; the official code concatenates the
whole pool on every edit). Ids are stable and increase along the rows; ``remove`` marks a row dead (the last row is
dropped outright), so ids keep meaning the same expert. A ``Routing`` is only valid for the library state it was
computed on; ``apply`` refuses a stale one.

Routing is per input, so a batch of B inputs routes like B separate calls (the official code is limited to batch
size 1). The exact hard filter scans the visual keys in chunks that stay in cache (``chunk_bytes``): one streaming
read of the keys, converted to fp32 chunk by chunk. From ``prefilter_min`` experts on, an attached ``Prefilter``
(an approximate vector index) may propose candidates instead; each is re-checked with the same exact fp32 filter,
so only experts that pass it are ever applied (a candidate the index misses is a recall loss, measured in
``benchmarks/library_scale.py``).

One device: every tensor the library holds (ids, live flags, key digests, keys, factors, key norms) lives on
``device``, the one given to the constructor, ``to``, ``load`` or ``open`` (experts added elsewhere are copied
there), so routing never copies keys between devices; only the pre-filter's queries and candidates cross to and
from the index's host memory, once per ``route``.

Given a folder (``open``), every ``add`` and ``remove`` is committed durably before it returns (``storage.py``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from .networks import Experts, InputKeys, apply_experts, fp32
from .routing import hard_filter, paired_similarity, similarity, soft_weights
from .storage import FACTORS, KEY_BYTES, Contents, LibraryStore, key_digest, read_library

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Routing:
    """Which experts a batch of inputs uses, and with which weights.

    Only the ``M`` experts selected by at least one input appear; an input's weight is zero for the
    experts that only other inputs selected.
    """

    slots: Tensor  # (M,) long, library rows (internal; what ``apply`` gathers)
    expert_ids: Tensor  # (M,) long, stable ids of those rows
    keep: Tensor  # (B, M) bool, expert passed this input's hard filter
    weights: Tensor  # (B, M) soft weights, 0 where not kept
    version: int  # library state this routing was computed on

    def report(self) -> list[list[tuple[int, float]]]:
        """Per input, the ``(expert_id, weight)`` pairs that fired, heaviest first."""
        ids, keep, weights = self.expert_ids.tolist(), self.keep.tolist(), self.weights.tolist()
        report = []
        for kept_row, weight_row in zip(keep, weights, strict=True):
            fired = [(ids[j], w) for j, (k, w) in enumerate(zip(kept_row, weight_row, strict=True)) if k]
            report.append(sorted(fired, key=lambda item: -item[1]))
        return report


class Prefilter(Protocol):
    """An approximate index over the experts' flattened visual keys ``(k d_m,)``: proposes candidates, decides nothing.

    The library keeps it in step (``add``/``remove``/``reset`` with the stable expert ids) and re-checks every
    candidate exactly; ``easyedit_liveedit.index`` has one on faiss.
    """

    def add(self, ids: Tensor, keys: Tensor) -> None:
        """Index ``keys (n, k d_m)`` fp32 under ``ids (n,)``."""

    def remove(self, ids: Tensor) -> None:
        """Forget ``ids``."""

    def reset(self) -> None:
        """Forget everything."""

    def ready(self) -> bool:
        """Whether ``candidates`` can answer (an index that must be trained first may not be)."""

    def candidates(self, queries: Tensor, thresholds: Tensor) -> list[Tensor]:
        """Per query of ``queries (B, k d_m)``: ids whose inner product with it may exceed ``thresholds (B,)``."""


class ExpertLibrary:
    """Grows by one expert per edit; routes inputs; adds the selected experts' residual; persists to a folder."""

    def __init__(
        self,
        dtype: torch.dtype | None = None,
        initial_capacity: int = 16,
        chunk_bytes: int = 1 << 21,
        prefilter: Prefilter | None = None,
        prefilter_min: int = 100_000,
        device: torch.device | str = "cpu",
    ) -> None:
        """
        Args:
            dtype: storage dtype of keys and factors (None: that of the first experts added), a floating dtype; the
                backbone's compute dtype halves the bytes of fp32 where it runs in bf16/fp16. Routing math is fp32
                whatever it is.
            initial_capacity: rows of the in-memory tail before its first doubling.
            chunk_bytes: fp32 bytes of visual keys scored per step of the exact scan (sized to stay in cache).
            prefilter: optional approximate index (``Prefilter``), consulted from ``prefilter_min`` experts on.
            device: where every tensor of the library lives (the networks' device, so routing stays on it).

        Raises:
            ValueError: a non-floating ``dtype`` (an int8 expert would hold only whole numbers), naming it.
        """
        _check_storage_dtype(dtype, "ExpertLibrary")
        if initial_capacity < 1:
            raise ValueError(f"ExpertLibrary: initial_capacity must be >= 1, got {initial_capacity}")
        if chunk_bytes < 1:
            raise ValueError(f"ExpertLibrary: chunk_bytes must be >= 1, got {chunk_bytes}")
        self.dtype = dtype
        self.device = torch.device(device)
        self.chunk_bytes = chunk_bytes
        self.prefilter_min = prefilter_min
        self._initial_capacity = initial_capacity
        self._prefilter = prefilter
        self._store: LibraryStore | None = None
        self._version = 0  # bumped by every change; a Routing remembers the version it saw
        self._clear()

    def _clear(self) -> None:
        self._frozen: list[dict[str, Tensor]] = []  # loaded segments (memory-mapped shards), never written
        self._frozen_rows = 0
        self._tail: dict[str, Tensor] = {}  # name -> (capacity, ...) preallocated, first _tail_size rows in use
        self._tail_size = 0
        self._ids = torch.empty(0, dtype=torch.long, device=self.device)  # (capacity,) id of every row, increasing
        self._alive = torch.empty(0, dtype=torch.bool, device=self.device)  # (capacity,) False once removed
        self._key_ids: dict[bytes, int] = {}  # digest -> id of the live expert committed under it
        self._size = 0  # live experts
        self._next_id = 0
        self._version += 1
        if self._prefilter is not None:
            self._prefilter.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget every expert: the library equals a freshly made one (ids restart at 0); durable if ``open``."""
        if self._store is not None:
            self._store.replace_all(None, set(), 0)
        self._clear()

    def __len__(self) -> int:
        return self._size

    @property
    def rows(self) -> int:
        """Rows in use, live or removed."""
        return self._frozen_rows + self._tail_size

    @property
    def capacity(self) -> int:
        """Rows allocated in the in-memory tail (``>= rows in it``); doubles when an ``add`` does not fit."""
        return next(iter(self._tail.values())).shape[0] if self._tail else 0

    def ids(self) -> list[int]:
        """Ids of the stored experts, in storage order (increasing)."""
        return self._ids[: self.rows][self._alive[: self.rows]].tolist()

    def has_key(self, key: str) -> bool:
        """Whether a live expert was committed under the edit key ``key`` (``add(..., keys=...)``)."""
        return self.key_id(key) is not None

    def key_id(self, key: str) -> int | None:
        """The id of the live expert committed under the edit key ``key``, or None."""
        return self._key_ids.get(key_digest(key))

    def experts(self, expert_ids: Sequence[int]) -> Experts:
        """Copies of the stored keys and factors of the live experts ``expert_ids``, in that order (storage dtype).

        Raises:
            KeyError: naming an id that is not a live expert.
        """
        rows = []
        for expert_id in expert_ids:
            row = self._row_of(expert_id)
            if row is None:
                raise KeyError(f"ExpertLibrary.experts: no expert with id {expert_id}")
            rows.append(row)
        order = torch.tensor(rows, dtype=torch.long)
        unique, back = torch.unique(order, sorted=True, return_inverse=True)  # _gather takes sorted, unique rows
        gathered = {name: self._gather(name, unique) for name in FACTORS}  # (n_unique, ...) each
        return Experts(**{name: t[back.to(t.device)] for name, t in gathered.items()})  # (n, ...) in the order given

    def layout(self) -> dict[str, tuple[int, ...]]:
        """Per-expert shape of each stored tensor (empty until the first add or load fixes them)."""
        block = self._frozen[0] if self._frozen else self._tail
        return {name: tuple(block[name].shape[1:]) for name in FACTORS} if block else {}

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> ExpertLibrary:
        """Move (or cast) every tensor of the library into memory on ``device`` (None: where it is); ids and routing
        are unchanged. Returns self.

        Loaded shards are copied (they stop being memory-mapped). A library open on a folder keeps its dtype.
        """
        _check_storage_dtype(dtype, "ExpertLibrary.to")
        if dtype is not None and self._store is not None and dtype != self.dtype:
            raise ValueError(f"ExpertLibrary.to: the library is open on {self._store.folder} in {self.dtype}")
        self.device = self.device if device is None else torch.device(device)
        merged = self._all_rows()
        self._frozen, self._frozen_rows = [], 0
        cast = {name: dtype for name in FACTORS}  # key digests stay bytes
        self._tail = {name: t.to(device=self.device, dtype=cast.get(name)) for name, t in merged.items()}
        if self._tail:
            self._tail["norm"] = _norms_of(self._tail["phi"])
        self._tail_size = next(iter(merged.values())).shape[0] if merged else 0
        self.dtype = dtype or self.dtype
        self._ids, self._alive = self._ids.to(self.device), self._alive.to(self.device)
        self._version += 1
        return self

    def bytes_per_expert(self) -> int:
        """Memory one expert costs: keys and factors in the storage dtype, its id, live flag, key digest and the
        norm of its visual key (0 until the first add fixes the shapes)."""
        block = self._frozen[0] if self._frozen else self._tail
        if not block:
            return 0
        factors = sum(t[0].numel() * t.element_size() for t in (block[name] for name in FACTORS))
        return factors + self._ids.element_size() + self._alive.element_size() + KEY_BYTES + 4  # + fp32 key norm

    # ------------------------------------------------------------------ edits
    def add(self, experts: Experts, keys: Sequence[str] | None = None) -> list[int]:
        """Store ``len(experts)`` new experts (detached, cast to ``dtype``); returns their ids.

        Args:
            keys: optional edit keys, one per expert (e.g. a fingerprint of the request), for ``has_key``.

        Raises:
            ValueError: naming the tensor and row, for mismatched shapes, a non-finite value, a key used twice or
                already committed. The library (and its folder) is then unchanged.
        """
        new = {name: getattr(experts, name).detach() for name in FACTORS}
        n = new["U"].shape[0]
        if any(t.shape[0] != n for t in new.values()):
            raise ValueError(f"ExpertLibrary.add: batch sizes differ: { {k: tuple(v.shape) for k, v in new.items()} }")
        if keys is not None and len(keys) != n:
            raise ValueError(f"ExpertLibrary.add: {len(keys)} keys for {n} experts")
        if n == 0:
            return []
        dtype = self.dtype or new["U"].dtype
        expected = self.layout()
        for name, t in new.items():
            if expected and tuple(t.shape[1:]) != expected[name]:
                raise ValueError(
                    f"ExpertLibrary.add: {name} has shape {tuple(t.shape[1:])} per expert, "
                    f"the library stores {expected[name]}"
                )
            if not t.is_floating_point():
                raise ValueError(f"ExpertLibrary.add: {name} is {t.dtype}, expected a floating tensor")
            bad = (~torch.isfinite(t.to(dtype))).flatten(1).any(dim=1).nonzero().flatten().tolist()
            if bad:
                raise ValueError(f"ExpertLibrary.add: {name} of expert(s) {bad} of this batch is not finite "
                                 f"(in {dtype}); nothing was stored")  # fmt: skip
        digests = self._digest_rows(keys, n)
        new = {name: t.to(dtype) for name, t in new.items()}
        ids = torch.arange(self._next_id, self._next_id + n, dtype=torch.long)
        if self._store is not None:  # the commit: durable before anything changes in memory
            self._store.append(ids, digests, {name: t.cpu() for name, t in new.items()})
        self.dtype = dtype
        self._append_rows({name: t.to(self.device) for name, t in new.items()}, ids, digests)
        return ids.tolist()

    def _digest_rows(self, keys: Sequence[str] | None, n: int) -> Tensor:
        digests = torch.zeros(n, KEY_BYTES, dtype=torch.uint8)
        if keys is None:
            return digests
        seen: set[bytes] = set()
        for row, key in enumerate(keys):
            if not isinstance(key, str) or not key:
                raise ValueError(f"ExpertLibrary.add: key of expert {row} must be a non-empty string, got {key!r}")
            digest = key_digest(key)
            if digest in self._key_ids or digest in seen:
                raise ValueError(f"ExpertLibrary.add: an expert was already committed under key {key!r}")
            seen.add(digest)
            digests[row] = torch.frombuffer(bytearray(digest), dtype=torch.uint8)
        return digests

    def _append_rows(self, new: dict[str, Tensor], ids: Tensor, digests: Tensor) -> None:
        """Put rows (factors on the library's device, ``digests (n, 16)`` on the host) into the in-memory tail,
        growing it; bookkeeping; the prefilter."""
        n = len(ids)
        new = {**new, "key": digests.to(self.device), "norm": _norms_of(new["phi"])}
        if not self._tail:
            self._tail = {name: t.new_empty((0, *t.shape[1:])) for name, t in new.items()}
        self._reserve(self._tail_size + n)
        rows = slice(self._tail_size, self._tail_size + n)
        for name, t in new.items():
            self._tail[name][rows] = t
        self._set_bookkeeping(ids, digests)
        self._tail_size += n
        if self._prefilter is not None:
            self._prefilter.add(ids, new["phi"].flatten(1).float().cpu())

    def _set_bookkeeping(self, ids: Tensor, digests: Tensor, alive: Tensor | None = None) -> None:
        """Record ids and live flags of the next ``len(ids)`` rows, and the keys of the live ones (arguments on the
        host: they are read here, and copied to the library's device)."""
        start, n = self.rows, len(ids)
        needed = start + n
        if needed > self._ids.shape[0]:
            capacity = max(needed, 2 * self._ids.shape[0], self._initial_capacity)
            self._ids = _grown(self._ids, capacity, start)
            self._alive = _grown(self._alive, capacity, start)
        alive = torch.ones(n, dtype=torch.bool) if alive is None else alive
        self._ids[start:needed] = ids.to(self.device)
        self._alive[start:needed] = alive.to(self.device)
        for row in (digests.any(dim=1) & alive.cpu()).nonzero().flatten().tolist():
            self._key_ids[bytes(digests[row].tolist())] = int(ids[row])
        self._size += int(alive.sum())
        self._next_id = max(self._next_id, int(ids[-1]) + 1) if n else self._next_id
        self._version += 1

    def _reserve(self, needed: int) -> None:
        """Make room for ``needed`` rows in the tail, doubling its capacity (one copy per doubling)."""
        if needed <= self.capacity:
            return
        capacity = self.capacity or self._initial_capacity
        while capacity < needed:
            capacity *= 2
        self._tail = {name: _grown(old, capacity, self._tail_size) for name, old in self._tail.items()}
        logger.debug("expert library capacity grown to %d", capacity)

    def remove(self, expert_id: int) -> None:
        """Delete one expert (durably if ``open``); other ids keep their experts."""
        row = self._row_of(expert_id)
        if row is None:
            raise KeyError(f"ExpertLibrary.remove: no expert with id {expert_id}")
        if self._store is not None:
            self._store.remove(expert_id)
        self._alive[row] = False
        digest = bytes(self._gather("key", torch.tensor([row]))[0].tolist())
        if self._key_ids.get(digest) == expert_id:
            del self._key_ids[digest]
        if row == self.rows - 1 and self._tail_size:  # the last row: drop it, nothing is left behind
            self._tail_size -= 1
        self._size -= 1
        self._version += 1
        if self._prefilter is not None:
            self._prefilter.remove(torch.tensor([expert_id]))

    def _row_of(self, expert_id: int) -> int | None:
        """The live row holding ``expert_id`` (ids increase along rows), or None."""
        ids = self._ids[: self.rows]
        row = int(torch.searchsorted(ids, torch.tensor(expert_id, device=ids.device)))
        return row if row < len(ids) and int(ids[row]) == expert_id and bool(self._alive[row]) else None

    # ------------------------------------------------------------------ storage access
    def _blocks(self) -> Iterator[tuple[int, dict[str, Tensor], int]]:
        """``(first row, tensors, rows)`` of each stored block: loaded segments, then the in-memory tail."""
        start = 0
        for segment in self._frozen:
            n = segment["U"].shape[0]
            yield start, segment, n
            start += n
        if self._tail_size:
            yield start, self._tail, self._tail_size

    def _gather(self, name: str, rows: Tensor) -> Tensor:
        """Rows ``rows`` (sorted, unique) of tensor ``name``, across blocks."""
        parts = []
        rows = rows.cpu()
        for start, block, n in self._blocks():
            inside = rows[(rows >= start) & (rows < start + n)] - start
            if len(inside):
                parts.append(block[name][inside.to(block[name].device)])
        return torch.cat(parts)

    def _all_rows(self) -> dict[str, Tensor]:
        """Every row (live or not) of every factor, concatenated in memory."""
        blocks = list(self._blocks())
        if not blocks:
            return {name: t[:0].clone() for name, t in self._tail.items()}  # no rows (or no shapes) yet
        return {name: torch.cat([block[name][:n] for _, block, n in blocks]) for name in (*FACTORS, "key")}

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def route(self, keys: InputKeys, weighting: str = "learned") -> Routing:
        """Route each input on its own: hard visual filter against its sentinel, then soft textual weights.

        Args:
            keys: the inputs' keys (``LiveEditNetwork.input_keys``).
            weighting: how the kept experts share an input, ``routing.soft_weights``'s (the config's
                ``soft_weights``; ``learned`` is the paper's).

        Invariant: row ``b`` of the result equals routing input ``b`` alone.
        """
        B = len(keys)
        if self._size == 0:  # nothing to route to
            device = keys.psi.device
            empty = torch.empty(0, dtype=torch.long, device=device)
            no_keep = torch.zeros(B, 0, dtype=torch.bool, device=device)
            return Routing(empty, empty, no_keep, keys.psi.new_zeros(B, 0), self._version)
        device = self.device
        with fp32(device):  # keys are stored narrower; routing math is always fp32
            phi, psi, sentinel = (t.to(device, torch.float32) for t in (keys.phi, keys.psi, keys.sentinel))
            has_image = keys.has_image.to(device)
            bar = paired_similarity(phi, sentinel)  # (B,) the sentinel's similarity: the bar to clear
            if self._prefilter is not None and self._size >= self.prefilter_min and self._prefilter.ready():
                inputs, rows = self._kept_from_candidates(phi, bar, has_image)
            else:
                inputs, rows = self._kept_by_scan(phi, bar, has_image)
            slots, column = torch.unique(rows, sorted=True, return_inverse=True)  # (M,) rows any input kept
            keep = torch.zeros(B, len(slots), dtype=torch.bool, device=device)
            keep[inputs, column] = True  # (B, M)
            lib_psi = self._gather("psi", slots).to(device, torch.float32) if len(slots) else psi[:0]  # (M, k, d_m)
            # soft routing over the survivors only: w = sigmoid(a) * softmax_kept(a) (or 1 / |kept|, the ablation)
            weights = soft_weights(similarity(psi, lib_psi), keep, weighting)  # (B, M)
        return Routing(slots, self._ids[slots], keep, weights, self._version)

    def _kept_by_scan(self, phi: Tensor, bar: Tensor, has_image: Tensor) -> tuple[Tensor, Tensor]:
        """Exact hard filter over every row: ``(input index, row)`` of each expert an input keeps.

        Keys stored in fp32 are scored directly, ``chunk_bytes`` at a time (the copy stays in cache). Keys stored
        narrower (bf16/fp16) are first screened in their own dtype: one matrix-vector product per block, at the speed
        of reading the keys (torch has no narrow x narrow -> fp32 product on a CPU, and widening every key first
        costs about twice that read). The screen only rules out experts provably below the bar:
        ``|<k, q> - screen| <= eps |screen| + (eps + D 2^-23) |k| |q|`` (the query rounded to the storage dtype,
        fp32 accumulation over ``D`` terms, the result rounded; ``eps`` is the dtype's machine epsilon, twice its unit
        roundoff). Every other expert is scored in fp32, so the result is the fp32 hard filter's.
        """
        width = phi[0].numel()
        query = phi.flatten(1)  # (B, k d_m) fp32
        narrow = self.dtype in (torch.bfloat16, torch.float16)
        chunk = 65536 if narrow else max(1, self.chunk_bytes // (4 * width))
        if narrow:
            eps = torch.finfo(self.dtype).eps
            rounded = query.to(self.dtype)
            bar_raw = bar.masked_fill(~has_image, math.inf) * (phi.shape[1] * math.sqrt(phi.shape[2]))  # raw units
            margin = (eps + width * 2.0**-23) * query.norm(dim=1)  # (B,) times |k| below
        inputs, rows = [], []
        for start, block, n in self._blocks():
            keys = block["phi"]
            norms = self._key_norms(block, n) if narrow else None
            for s in range(0, n, chunk):
                e = min(s + chunk, n)
                part, where = keys[s:e], None
                if narrow:
                    screen = (part.flatten(1) @ rounded.T.to(part.device)).to(query.device, torch.float32)  # (c, B)
                    slack = eps * screen.abs() + norms[s:e, None].to(query.device) * margin[None]
                    where = ((screen + slack) > bar_raw[None]).any(dim=1).nonzero().flatten()  # rows that may pass
                    if len(where) == 0:
                        continue
                    part = part[where.to(part.device)]
                keep = hard_filter(similarity(phi, part.to(phi.device, torch.float32)), bar, has_image)  # (B, c)
                b, r = keep.nonzero(as_tuple=True)
                inputs.append(b)
                rows.append((r if where is None else where[r]) + start + s)
        if not rows:
            return self._nothing_kept()
        return self._live(torch.cat(inputs), torch.cat(rows))

    def _key_norms(self, block: dict[str, Tensor], n: int) -> Tensor:
        """``|phi_m|`` (fp32) of a block's first ``n`` rows: kept up to date in the tail, computed once per segment."""
        norms = block.get("norm")
        if norms is None:
            norms = _norms_of(block["phi"][:n])
            block["norm"] = norms  # a loaded segment never changes; the tail's column is filled on every add
        return norms

    def _kept_from_candidates(self, phi: Tensor, bar: Tensor, has_image: Tensor) -> tuple[Tensor, Tensor]:
        """The prefilter's candidates, re-checked with the exact hard filter (same function as the scan)."""
        scale = phi.shape[1] * math.sqrt(phi.shape[2])  # similarity = <flattened keys> / scale
        thresholds = bar.masked_fill(~has_image, math.inf) * scale  # text-only inputs keep nothing
        proposed = self._prefilter.candidates(phi.flatten(1).cpu(), thresholds.cpu())  # the index is on the host
        inputs, rows = [], []
        all_ids = self._ids[: self.rows]
        for b, ids in enumerate(proposed):
            ids = ids.to(self.device, torch.long)  # candidates meet the library's ids and live flags on its device
            row = torch.searchsorted(all_ids, ids).clamp(max=len(all_ids) - 1)
            row = torch.unique(row[all_ids[row] == ids])
            if len(row) == 0:
                continue
            part = self._gather("phi", row).to(phi.device, torch.float32)
            kept = hard_filter(similarity(phi[b : b + 1], part), bar[b : b + 1], has_image[b : b + 1])[0]
            rows.append(row[kept])
            inputs.append(torch.full((int(kept.sum()),), b, dtype=torch.long, device=self.device))
        if not rows:
            return self._nothing_kept()
        return self._live(torch.cat(inputs), torch.cat(rows))

    def _nothing_kept(self) -> tuple[Tensor, Tensor]:
        empty = torch.empty(0, dtype=torch.long, device=self.device)
        return empty, empty

    def _live(self, inputs: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        alive = self._alive[rows]
        return inputs[alive], rows[alive]

    def apply(self, h: Tensor, routing: Routing, layer_norm: nn.Module) -> Tensor:
        """``h + sum_m w_m ReLU(LN_r(h) U_m^T) V_m`` at every token, over the experts ``routing`` selected.

        Args:
            h: ``(B, T, d)`` layer-``l_e`` hidden states of the routed inputs.
            routing: from ``route`` on the current library state.
            layer_norm: ``LN_r`` (``LiveEditNetwork.expert_norm``).

        Returns:
            ``(B, T, d)``; ``h`` itself when no input selected any expert.
        """
        if routing.version != self._version:
            raise RuntimeError("ExpertLibrary.apply: the routing is stale (the library changed since route())")
        if routing.slots.numel() == 0:
            return h
        U = self._gather("U", routing.slots)  # (M, r, d), gathered once for the whole batch
        V = self._gather("V", routing.slots)  # (M, r, d)
        return apply_experts(h, layer_norm, U, V, routing.weights)

    # ------------------------------------------------------------------ prefilter
    def set_prefilter(self, prefilter: Prefilter | None, min_experts: int | None = None) -> None:
        """Attach (or detach) an approximate index and fill it with every live expert's visual key."""
        self._prefilter = prefilter
        if min_experts is not None:
            self.prefilter_min = min_experts
        if prefilter is None:
            return
        prefilter.reset()
        for start, block, n in self._blocks():
            for s in range(0, n, 65536):
                e = min(s + 65536, n)
                alive = self._alive[start + s : start + e].cpu()
                ids = self._ids[start + s : start + e].cpu()[alive]
                if len(ids):
                    prefilter.add(ids, block["phi"][s:e][alive.to(block["phi"].device)].flatten(1).float().cpu())

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Tensor]:
        """Live rows only (tensors, safe for ``torch.load(weights_only=True)``)."""
        alive = self._alive[: self.rows]
        state = {name: t[alive.to(t.device)].clone() for name, t in self._all_rows().items()} if self.rows else {}
        state["ids"] = self._ids[: self.rows][alive].clone()
        state["next_id"] = torch.tensor(self._next_id, dtype=torch.long)
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Replace the whole library with ``state`` (from ``state_dict``); device and dtype follow its tensors."""
        ids = state["ids"]
        n = ids.shape[0]
        present = [name for name in FACTORS if name in state]
        if present and len(present) != len(FACTORS):
            raise ValueError(f"ExpertLibrary.load_state_dict: expected all of {FACTORS}, got {present}")
        if n and not present:
            raise ValueError(f"ExpertLibrary.load_state_dict: {n} ids but no expert tensors")
        if any(state[name].shape[0] != n for name in present):
            raise ValueError("ExpertLibrary.load_state_dict: tensors disagree on the number of experts")
        id_list = ids.tolist()
        if len(set(id_list)) != n or any(i >= int(state["next_id"]) for i in id_list):
            raise ValueError("ExpertLibrary.load_state_dict: ids must be unique and below next_id")
        segment = {**{name: state[name] for name in FACTORS}, "ids": ids, "key": state.get("key")} if n else None
        self.device = state[FACTORS[0]].device if present else ids.device
        self._replace([segment] if segment else [], removed=set(), next_id=int(state["next_id"]), frozen=False)

    def _replace(self, segments: list[dict[str, Tensor]], removed: set[int], next_id: int, frozen: bool) -> None:
        """Hold exactly ``segments`` (rows sorted by id across them), as loaded segments or copied into the tail, on
        the library's device (a memory-mapped segment stays mapped when that is the CPU)."""
        self._clear()
        order_ok = all(bool((s["ids"][1:] > s["ids"][:-1]).all()) for s in segments if len(s["ids"]) > 1)
        if not frozen or not order_ok:
            segments = [_sorted_by_id(segments)] if segments else []
        for segment in segments:
            ids, digests = segment["ids"].cpu(), segment.get("key")  # read on the host for the bookkeeping
            n = len(ids)
            digests = torch.zeros(n, KEY_BYTES, dtype=torch.uint8) if digests is None else digests.cpu()
            alive = ~torch.isin(ids, torch.tensor(sorted(removed), dtype=torch.long))
            self._set_bookkeeping(ids, digests, alive)  # rows start..start+n
            stored = {**{name: segment[name].to(self.device) for name in FACTORS}, "key": digests.to(self.device)}
            if frozen:
                self._frozen.append(stored)
                self._frozen_rows += n
            else:
                factors = {**stored, "norm": _norms_of(stored["phi"])}
                self._tail = {name: t.new_empty((0, *t.shape[1:])) for name, t in factors.items()}
                self._reserve(n)
                for name, t in factors.items():
                    self._tail[name][:n] = t
                self._tail_size = n
        if segments:
            self.dtype = segments[0]["U"].dtype
        self._next_id = max(self._next_id, next_id)
        self.set_prefilter(self._prefilter)

    def save(self, path: str | os.PathLike, identity: dict[str, Any] | None = None, shard_size: int = 65536) -> None:
        """Write the live experts as a library folder (``storage.py``), with the identity of the editor that made
        them (``LiveEditModel.identity``), which ``load`` checks. An existing library folder at ``path`` must have
        the same identity; it is replaced."""
        if self._store is not None and os.path.realpath(self._store.folder) == os.path.realpath(path):
            raise ValueError(f"{path}: the library is open on this folder, so every change is already committed there")
        store, _ = LibraryStore.open(path, dict(identity or {}), shard_size=shard_size, verify=False)
        try:
            state = self.state_dict()
            segment = {name: state[name] for name in ("ids", "key", *FACTORS)} if len(state["ids"]) else None
            store.replace_all(segment, set(), int(state["next_id"]))
        finally:
            store.close()

    def load(
        self,
        path: str | os.PathLike,
        map_location: torch.device | str | None = None,
        identity: dict[str, Any] | None = None,
        verify: bool = True,
    ) -> None:
        """Replace the library with the one in folder ``path``; on the CPU its shards stay memory-mapped.

        Args:
            map_location: the library's device from now on (None: the one it has); a device other than the CPU
                copies the experts there (no memory map then).
            identity: the loading editor's identity; every field the folder records must equal it, or a
                ``LibraryFileError`` (a ``ValueError``) names the first that differs and the library is left as it was.
            verify: check every shard's SHA-256 against the manifest (reads each byte once).
        """
        contents, _ = read_library(path, identity, verify)
        self._adopt(contents, map_location)
        logger.info("loaded %d experts from %s", self._size, path)

    def open(
        self,
        path: str | os.PathLike,
        identity: dict[str, Any],
        shard_size: int = 4096,
        verify: bool = True,
        map_location: torch.device | str | None = None,
    ) -> None:
        """Hold the library in folder ``path`` (created if missing) and commit every later change to it durably.

        Replaces the current contents with the folder's. One process at a time may hold a folder.
        """
        if self._store is not None and os.path.realpath(self._store.folder) == os.path.realpath(path):
            self.close()  # reopening its own folder: release the lock first
        store, contents = LibraryStore.open(path, identity, shard_size=shard_size, verify=verify)
        try:
            if contents.layout is not None and self.dtype is not None and contents.layout.dtype != self.dtype:
                logger.info("%s stores experts in %s; the library follows it", path, contents.layout.dtype)
            self._adopt(contents, map_location)
        except BaseException:
            store.close()
            raise
        self.close()  # only now: a folder that cannot be opened leaves the library as it was
        self._store = store
        logger.info("opened %s: %d experts", path, self._size)

    def close(self) -> None:
        """Stop committing changes to the folder given to ``open`` (the contents stay)."""
        if self._store is not None:
            self._store.close()
            self._store = None

    @property
    def path(self) -> str | None:
        """The folder this library commits to, if ``open``."""
        return None if self._store is None else str(self._store.folder)

    def _adopt(self, contents: Contents, map_location: torch.device | str | None) -> None:
        if map_location is not None:
            self.device = torch.device(map_location)
        self._replace(contents.segments, contents.removed, contents.next_id, frozen=True)
        if contents.layout is not None:
            self.dtype = contents.layout.dtype


def _check_storage_dtype(dtype: torch.dtype | None, where: str) -> None:
    """Refuse a storage dtype that cannot hold an expert (an integer one, as a quantized backbone's weights have)."""
    if dtype is not None and not dtype.is_floating_point:
        raise ValueError(
            f"{where}: the experts' storage dtype must be floating, got {dtype} (a quantized backbone's weight "
            "dtype?); set it to the backbone's compute dtype, e.g. torch.float16 (LiveEditModel: library_dtype)"
        )


def _norms_of(phi: Tensor) -> Tensor:
    """``|phi_m|`` in fp32 for ``phi (n, k, d_m)``, widened 65,536 rows at a time."""
    if len(phi) == 0:
        return torch.empty(0, dtype=torch.float32, device=phi.device)
    return torch.cat([phi[s : s + 65536].flatten(1).float().norm(dim=1) for s in range(0, len(phi), 65536)])


def _grown(old: Tensor, capacity: int, used: int) -> Tensor:
    new = old.new_empty((capacity, *old.shape[1:]))
    new[:used] = old[:used]
    return new


def _sorted_by_id(segments: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """One segment holding every row of ``segments``, sorted by id."""
    merged = {name: torch.cat([s[name] for s in segments]) for name in ("ids", *FACTORS)}
    keys = [s.get("key") for s in segments]
    if all(k is not None for k in keys):
        merged["key"] = torch.cat(keys)
    order = torch.argsort(merged["ids"])
    return {name: t[order.to(t.device)] for name, t in merged.items()}
