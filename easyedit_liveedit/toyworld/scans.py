"""The scans both worlds are drawn from: scikit-learn's ``load_digits``, split into disjoint, seeded pools.

``load_digits`` ships 1,797 real 8x8 grey-level scans of handwritten digits (UCI "optdigits", 43 writers). A
world deals them into pools (train, dev carved out of train, eval, ``m_loc``, classification) so that no scan
serves two purposes: the digits world makes one subject of each scan, the scenes world composes four per subject.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def load_scans() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digit scans as float arrays in [0, 1] (ink = 1), shape (N, 8, 8), and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype(np.float32) / 16.0, digits.target.astype(np.int64)


@dataclass(frozen=True)
class Pools:
    """Disjoint lists of scan indices; each world's configuration says what each pool is for.

    ``dev`` is carved from the train pool: its scans are in no train record, so meta-training never sees them
    (the scenes world also keeps them out of pretraining; the digits world pretrains on them). Probes and choices
    of settings read the dev split, never the eval split.
    """

    train: list[int]
    eval: list[int]
    mloc: list[int]
    cls: list[int]
    dev: list[int]

    @classmethod
    def split(cls, labels: np.ndarray, sizes: tuple[int, int, int, int], seed: int, n_dev: int) -> Pools:
        """Draw the four pools from a seeded permutation of all scans, then ``n_dev`` dev scans out of train.

        The dev scans are dealt digit by digit (as even as the train pool allows), so that a small dev pool still
        holds every digit. The eval, ``m_loc`` and classification pools do not depend on ``n_dev``.
        """
        order = np.random.default_rng([seed, 1]).permutation(len(labels)).tolist()
        bounds = np.cumsum((0,) + sizes)
        train, evaluation, mloc, classification = (sorted(order[bounds[i] : bounds[i + 1]]) for i in range(4))
        if not 0 < n_dev < len(train):
            raise ValueError(f"n_dev={n_dev}: expected a positive number smaller than the train pool ({len(train)})")
        shuffled = np.random.default_rng([seed, 7]).permutation(train).tolist()
        groups = [[i for i in shuffled if labels[i] == digit] for digit in range(10)]
        dealt = [group[k] for k in range(max(map(len, groups))) for group in groups if k < len(group)]
        dev = set(dealt[:n_dev])
        return cls([i for i in train if i not in dev], evaluation, mloc, classification, sorted(dev))
