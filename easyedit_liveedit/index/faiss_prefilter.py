"""``FaissPrefilter``: an inverted-file (IVF) faiss index that proposes candidate experts for the hard filter.

The hard filter keeps expert ``m`` for an input iff ``<phi_in, phi_m> > t`` (flattened visual keys, ``t`` the
input's sentinel similarity in the same units): a threshold query under inner product, which is faiss's
``range_search`` with ``METRIC_INNER_PRODUCT``. An IVF index clusters the keys (k-means) and scans only the
``nprobe`` lists whose centroids are closest to the query, so a query reads a fraction ``nprobe / nlist`` of the
codes instead of every key; experts in lists it does not scan are missed (the recall loss, measured by
``benchmarks/library_scale.py``). The library re-checks every candidate exactly, so a candidate the index keeps
wrongly (its codes may be compressed, e.g. ``SQ8``) never fires.

Why faiss: it is the established library for this (IVF, compressed codes, range search under inner product, id
removal), ships CPU wheels on PyPI for Python 3.11 (``faiss-cpu``) with no other dependency than numpy, and the
same index runs on a GPU build. hnswlib and usearch search k nearest neighbours only, not a threshold.
"""

from __future__ import annotations

import importlib
import logging
import math
from typing import Any

import torch
from torch import Tensor

logger = logging.getLogger(__name__)


class FaissPrefilter:
    """Candidates for the exact hard filter from a faiss IVF index (``liveedit.library.Prefilter``).

    The index is trained (k-means) once it has seen ``train_size`` keys; until then ``ready()`` is False and the
    library scans exactly. Keys added before that are buffered and indexed right after training.
    """

    def __init__(
        self,
        nlist: int = 1024,
        nprobe: int = 64,
        codes: str = "Flat",
        train_size: int = 65536,
        margin: float = 0.0,
        threads: int | None = None,
    ) -> None:
        """
        Args:
            nlist: IVF lists (k-means centroids); about ``4 sqrt(N)`` for N experts.
            nprobe: lists scanned per query: the speed / recall trade-off.
            codes: how vectors are stored in the lists, a faiss factory suffix: ``Flat`` (fp32, exact inner
                products), ``SQ8`` (1 byte per dimension, inner products within about 1%), ``SQfp16``. Product
                quantisation (``PQ<m>np``) is far smaller but its inner products of keys unlike the training sample
                came out 5x too low here (the threshold test needs magnitudes, not just the order), so it needs a
                large ``margin``.
            train_size: keys to train the k-means on (faiss wants 30-256 per list).
            margin: lowers each query's threshold by ``margin * |t|``, so compressed codes that underestimate an
                inner product still propose the expert (the exact re-check removes the extras).
            threads: OpenMP threads faiss may use (None: faiss's default, every core).
        """
        try:
            self._faiss = importlib.import_module("faiss")
        except ImportError as error:
            raise ImportError("FaissPrefilter needs faiss: pip install faiss-cpu") from error
        for name, value in (("nlist", nlist), ("nprobe", nprobe), ("train_size", train_size)):
            if value < 1:
                raise ValueError(f"FaissPrefilter: {name} must be >= 1, got {value}")
        if train_size < nlist:
            raise ValueError(f"FaissPrefilter: train_size ({train_size}) must be at least nlist ({nlist})")
        if margin < 0:
            raise ValueError(f"FaissPrefilter: margin must be >= 0, got {margin}")
        self.nlist, self.nprobe, self.codes = nlist, nprobe, codes
        self.train_size, self.margin = train_size, margin
        if threads is not None:
            self._faiss.omp_set_num_threads(threads)
        self.reset()

    def reset(self) -> None:
        """Forget every key (the trained clustering too: the next keys train a new one)."""
        self._index: Any = None
        self._pending: list[tuple[Tensor, Tensor]] = []  # (ids, keys) seen before training
        self._pending_count = 0

    def __len__(self) -> int:
        return self._pending_count if self._index is None else int(self._index.ntotal)

    def ready(self) -> bool:
        return self._index is not None

    def add(self, ids: Tensor, keys: Tensor) -> None:
        """Index ``keys (n, D)`` under ``ids (n,)``; before training they wait in a buffer."""
        if self._index is None:
            self._pending.append((ids.cpu(), keys.detach().cpu()))
            self._pending_count += len(ids)
            if self._pending_count >= self.train_size:
                self._train()
            return
        self._index.add_with_ids(_numpy32(keys), ids.cpu().numpy().astype("int64"))

    def remove(self, ids: Tensor) -> None:
        if self._index is None:
            drop = set(ids.tolist())
            kept = [(i[keep], k[keep]) for i, k in self._pending if (keep := _not_in(i, drop)).any()]
            self._pending, self._pending_count = kept, sum(len(i) for i, _ in kept)
            return
        self._index.remove_ids(ids.cpu().numpy().astype("int64"))

    def candidates(self, queries: Tensor, thresholds: Tensor) -> list[Tensor]:
        """Per query, the ids whose (coded) inner product with it exceeds its threshold, lowered by the margin."""
        if self._index is None:
            raise RuntimeError("FaissPrefilter.candidates: the index is not trained yet (ready() is False)")
        found = []
        vectors = _numpy32(queries)
        for b, threshold in enumerate(thresholds.tolist()):
            if not math.isfinite(threshold):  # an input that may keep nothing (no image), or a broken key
                found.append(torch.empty(0, dtype=torch.long))
                continue
            radius = threshold - self.margin * abs(threshold)
            _, _, labels = self._index.range_search(vectors[b : b + 1], radius)  # (lims, distances, ids)
            found.append(torch.from_numpy(labels.astype("int64")))
        return found

    def _train(self) -> None:
        ids = torch.cat([i for i, _ in self._pending])
        keys = torch.cat([k for _, k in self._pending])
        self._pending, self._pending_count = [], 0
        dim = keys.shape[1]
        index = self._faiss.index_factory(dim, f"IVF{self.nlist},{self.codes}", self._faiss.METRIC_INNER_PRODUCT)
        sample = keys[torch.randperm(len(keys), generator=torch.Generator().manual_seed(0))[: self.train_size]]
        index.train(_numpy32(sample))
        index.nprobe = self.nprobe
        index.add_with_ids(_numpy32(keys), ids.numpy().astype("int64"))
        self._index = index
        logger.info("faiss IVF%d,%s trained on %d keys of width %d", self.nlist, self.codes, len(sample), dim)


def _numpy32(t: Tensor) -> Any:
    return t.detach().to("cpu", torch.float32).contiguous().numpy()


def _not_in(ids: Tensor, drop: set[int]) -> Tensor:
    return torch.tensor([i not in drop for i in ids.tolist()], dtype=torch.bool)
