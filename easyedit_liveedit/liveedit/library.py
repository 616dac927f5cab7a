"""The expert library: every edit LiveEdit has made, and routing of inputs to it.

``ExpertLibrary`` owns all edit state (nothing lives at module level): per expert its edit-side keys
``psi, phi (k, d_m)`` and factors ``U, V (r, d)``, in preallocated tensors whose capacity doubles when
full (amortised O(1) ``add``; the official code concatenates the whole pool on every edit).

Expert ids are stable: ``add`` hands out increasing ids and ``remove`` swaps the last row into the
freed one, so storage stays dense and ids keep meaning the same expert. A ``Routing`` is only valid for
the library state it was computed on; ``apply`` refuses a stale one.

Routing is per input, so a batch of B inputs routes like B separate calls (the official code is
limited to batch size 1). Shapes, device and dtype are fixed by the first ``add`` (or load).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .networks import Experts, InputKeys, apply_experts, fp32
from .routing import hard_filter, paired_similarity, similarity, soft_weights

logger = logging.getLogger(__name__)

_FACTORS = ("psi", "phi", "U", "V")  # per-expert tensors, in storage order


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


class ExpertLibrary:
    """Grows by one expert per edit; routes inputs; adds the selected experts' residual."""

    def __init__(self, initial_capacity: int = 16) -> None:
        if initial_capacity < 1:
            raise ValueError(f"ExpertLibrary: initial_capacity must be >= 1, got {initial_capacity}")
        self._initial_capacity = initial_capacity
        self._version = 0  # bumped by every change; a Routing remembers the version it saw
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget every expert: the library equals a freshly made one (ids restart at 0)."""
        self._store: dict[str, Tensor] = {}  # name -> (capacity, ...) preallocated, first _size rows live
        self._ids = torch.empty(0, dtype=torch.long)  # (capacity,) stable id of each live row
        self._slot_of: dict[int, int] = {}  # id -> row
        self._size = 0
        self._next_id = 0
        self._version += 1

    def __len__(self) -> int:
        return self._size

    @property
    def capacity(self) -> int:
        """Rows allocated (``>= len(self)``); doubles when an ``add`` does not fit."""
        return self._ids.shape[0]

    def ids(self) -> list[int]:
        """Ids of the stored experts, in storage order."""
        return self._ids[: self._size].tolist()

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> ExpertLibrary:
        """Move (or cast) the stored experts; ids and routing behaviour are unchanged. Returns self."""
        self._store = {k: v.to(device=device, dtype=dtype) for k, v in self._store.items()}
        self._ids = self._ids.to(device=device)
        return self

    def bytes_per_expert(self) -> int:
        """Memory one expert costs: keys, factors and its id (0 until the first add fixes the shapes)."""
        if not self._store:
            return 0
        return sum(t[0].numel() * t.element_size() for t in self._store.values()) + self._ids.element_size()

    def _reserve(self, needed: int) -> None:
        """Make room for ``needed`` rows, doubling the capacity (one copy per doubling)."""
        if needed <= self.capacity:
            return
        capacity = self.capacity or self._initial_capacity
        while capacity < needed:
            capacity *= 2
        for name, old in self._store.items():
            new = old.new_empty((capacity, *old.shape[1:]))
            new[: self._size] = old[: self._size]
            self._store[name] = new
        ids = self._ids.new_empty(capacity)
        ids[: self._size] = self._ids[: self._size]
        self._ids = ids
        logger.debug("expert library capacity grown to %d", capacity)

    # ------------------------------------------------------------------ edits
    def add(self, experts: Experts) -> list[int]:
        """Store ``len(experts)`` new experts (detached); returns their ids."""
        new = {name: getattr(experts, name).detach() for name in _FACTORS}
        n = new["U"].shape[0]
        if any(t.shape[0] != n for t in new.values()):
            raise ValueError(f"ExpertLibrary.add: batch sizes differ: { {k: tuple(v.shape) for k, v in new.items()} }")
        if n == 0:
            return []
        if not self._store:  # first add fixes shapes, device and dtype
            self._store = {k: v.new_empty((0, *v.shape[1:])) for k, v in new.items()}
            self._ids = torch.empty(0, dtype=torch.long, device=new["U"].device)
        for name, t in new.items():
            if t.shape[1:] != self._store[name].shape[1:]:
                raise ValueError(
                    f"ExpertLibrary.add: {name} has shape {tuple(t.shape[1:])} per expert, "
                    f"the library stores {tuple(self._store[name].shape[1:])}"
                )
        self._reserve(self._size + n)
        rows = slice(self._size, self._size + n)
        for name, t in new.items():
            self._store[name][rows] = t.to(self._store[name])
        new_ids = list(range(self._next_id, self._next_id + n))
        self._ids[rows] = torch.tensor(new_ids, dtype=torch.long)
        self._slot_of.update({i: self._size + j for j, i in enumerate(new_ids)})
        self._size += n
        self._next_id += n
        self._version += 1
        return new_ids

    def remove(self, expert_id: int) -> None:
        """Delete one expert; the last row moves into its place, other ids keep their experts."""
        if expert_id not in self._slot_of:
            raise KeyError(f"ExpertLibrary.remove: no expert with id {expert_id}")
        slot, last = self._slot_of.pop(expert_id), self._size - 1
        if slot != last:
            for t in self._store.values():
                t[slot] = t[last]
            moved = int(self._ids[last])
            self._ids[slot] = moved
            self._slot_of[moved] = slot
        self._size -= 1
        self._version += 1

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def route(self, keys: InputKeys) -> Routing:
        """Route each input on its own: hard visual filter against its sentinel, then soft textual weights.

        Invariant: row ``b`` of the result equals routing input ``b`` alone.
        """
        B = len(keys)
        if self._size == 0:  # nothing to route to
            device = keys.psi.device
            empty = torch.empty(0, dtype=torch.long, device=device)
            no_keep = torch.zeros(B, 0, dtype=torch.bool, device=device)
            return Routing(empty, empty, no_keep, keys.psi.new_zeros(B, 0), self._version)
        lib_phi, lib_psi = self._store["phi"][: self._size], self._store["psi"][: self._size]  # (N, k, d_m)
        device = lib_phi.device
        with fp32(device):  # keys may be stored narrower; routing math is always fp32
            phi, psi, sentinel = (t.to(device, torch.float32) for t in (keys.phi, keys.psi, keys.sentinel))
            # hard routing: expert m survives iff sim(phi_in, phi_m) > sim(phi_in, phi_sentinel)
            keep = hard_filter(
                similarity(phi, lib_phi.float()), paired_similarity(phi, sentinel), keys.has_image.to(device)
            )  # (B, N)
            slots = keep.any(dim=0).nonzero().squeeze(1)  # (M,) experts any input kept
            keep = keep[:, slots]  # (B, M)
            # soft routing over the survivors only: w = sigmoid(a) * softmax_kept(a)
            weights = soft_weights(similarity(psi, lib_psi[slots].float()), keep)  # (B, M)
        return Routing(slots, self._ids[slots], keep, weights, self._version)

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
        U = self._store["U"][routing.slots]  # (M, r, d), gathered once for the whole batch
        V = self._store["V"][routing.slots]  # (M, r, d)
        return apply_experts(h, layer_norm, U, V, routing.weights)

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Tensor]:
        """Live rows only (tensors, safe for ``torch.load(weights_only=True)``)."""
        state = {name: t[: self._size].clone() for name, t in self._store.items()}
        state["ids"] = self._ids[: self._size].clone()
        state["next_id"] = torch.tensor(self._next_id, dtype=torch.long)
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Replace the whole library with ``state`` (from ``state_dict``); device/dtype follow its tensors."""
        ids = state["ids"]
        n = ids.shape[0]
        present = [name for name in _FACTORS if name in state]
        if present and len(present) != len(_FACTORS):
            raise ValueError(f"ExpertLibrary.load_state_dict: expected all of {_FACTORS}, got {present}")
        if n and not present:
            raise ValueError(f"ExpertLibrary.load_state_dict: {n} ids but no expert tensors")
        if any(state[name].shape[0] != n for name in present):
            raise ValueError("ExpertLibrary.load_state_dict: tensors disagree on the number of experts")
        id_list = ids.tolist()
        if len(set(id_list)) != n or any(i >= int(state["next_id"]) for i in id_list):
            raise ValueError("ExpertLibrary.load_state_dict: ids must be unique and below next_id")
        self.reset()
        if present:
            self._store = {name: state[name].new_empty((0, *state[name].shape[1:])) for name in _FACTORS}
            self._ids = torch.empty(0, dtype=torch.long, device=state["U"].device)
            self._reserve(n)
            for name in _FACTORS:
                self._store[name][:n] = state[name]
            self._ids[:n] = ids
        self._slot_of = {i: slot for slot, i in enumerate(id_list)}
        self._size = n
        self._next_id = int(state["next_id"])

    def save(self, path: str | os.PathLike, identity: dict[str, Any] | None = None) -> None:
        """Write the library to ``path`` (``torch.save`` of plain tensors), with the identity of the editor that
        made its experts (``LiveEditModel.identity``), which ``load`` checks."""
        torch.save({"experts": self.state_dict(), "identity": dict(identity or {})}, path)

    def load(
        self,
        path: str | os.PathLike,
        map_location: torch.device | str | None = None,
        identity: dict[str, Any] | None = None,
    ) -> None:
        """Replace the library with the one saved at ``path`` (loaded with ``weights_only=True``).

        Args:
            identity: the loading editor's identity; every field the file records must equal it, or a
                ``ValueError`` names the first that differs and the library is left as it was.
        """
        saved = torch.load(path, map_location=map_location, weights_only=True)
        if identity is not None:
            check_identity(saved.get("identity", {}), identity, path)
        self.load_state_dict(saved["experts"])
        logger.info("loaded %d experts from %s", self._size, path)


def check_identity(saved: dict[str, Any], current: dict[str, Any], path: str | os.PathLike) -> None:
    """Raise ``ValueError`` naming the first field where a saved library's identity differs from ``current``."""
    if not saved:
        raise ValueError(f"{path}: the library records no identity, so whether its experts fit this editor is unknown")
    for key in [*current, *(k for k in saved if k not in current)]:  # shapes before the networks' fingerprint
        if saved.get(key) != current.get(key):
            raise ValueError(
                f"{path}: the library was made with {key}={saved.get(key)!r}, this editor has "
                f"{key}={current.get(key)!r}; its experts mean nothing here"
            )
