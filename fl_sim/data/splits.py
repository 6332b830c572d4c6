"""Seeded train/test splits for sources that ship without an official test set."""

from __future__ import annotations

import numpy as np


def split_indices(
    labels: np.ndarray, test_fraction: float, seed: int, *, stratify: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Return sorted (train, test) index arrays; each side gets at least one example.

    Stratified splits take ``round(test_fraction * count)`` of every class, so class balance
    of the source survives the split (mnist-5k: 500 per class -> 400/100 at 0.2).
    """
    n = len(labels)
    if n < 2:
        raise ValueError("need at least 2 examples to split into train and test")
    rng = np.random.default_rng(seed)
    if stratify:
        test_parts = []
        for cls in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == cls))
            test_parts.append(members[: int(round(test_fraction * len(members)))])
        test = np.concatenate(test_parts)
        if len(test) == 0:
            test = rng.choice(n, size=1, replace=False)
        elif len(test) == n:
            test = test[1:]
    else:
        n_test = min(max(1, int(round(test_fraction * n))), n - 1)
        test = rng.permutation(n)[:n_test]
    mask = np.zeros(n, dtype=bool)
    mask[test] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)
