"""The visual keys of recent meta-training edits, kept as negatives for the hard filter (ours, not in the paper).

At inference an input meets every stored expert; in a meta-training batch it meets only the batch's other ``B - 1``
edits, and few of them look like its image. On the toy scenes world after 1,000 dev edits about six experts of other
edits clear the visual hard filter for every input and take weight from the own expert (benchmarks/routing_probe.py).
``RecentEdits`` keeps the (detached) edit-side visual keys of the last ``size`` edits, MoCo-style, so the filter loss
can show each input a library-sized crowd: the hard filter must drop the hardest of them and still keep the own edit.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor


def image_fingerprints(images: Tensor) -> list[bytes]:
    """One digest per image of ``images (B, ...)``: equal exactly when the pixels are (``train_step.same_image``)."""
    return [hashlib.blake2b(row.contiguous().cpu().numpy().tobytes(), digest_size=16).digest() for row in images]


class RecentEdits:
    """A first-in first-out store of the edit-side visual keys ``phi`` of the last ``size`` meta-training edits."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"RecentEdits: size must be >= 1, got {size}")
        self.size = size
        self.phi: Tensor | None = None  # (Q, k, d_m)
        self.images: list[bytes] = []  # fingerprint of each stored edit's image

    def __len__(self) -> int:
        return len(self.images)

    def push(self, phi: Tensor, images: Tensor) -> None:
        """Store a batch's edit keys ``phi (B, k, d_m)`` (detached) and images, dropping the oldest beyond ``size``."""
        phi = phi.detach() if self.phi is None else torch.cat([self.phi, phi.detach()])
        self.phi = phi[-self.size :]
        self.images = (self.images + image_fingerprints(images))[-self.size :]

    def other_images(self, images: Tensor) -> Tensor:
        """``(B, Q)`` bool: stored edit ``q`` is about another image than input ``b``'s edit (a true negative)."""
        mine = image_fingerprints(images)
        return torch.tensor([[stored != own for stored in self.images] for own in mine], device=self.phi.device)
