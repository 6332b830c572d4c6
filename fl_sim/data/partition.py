"""Split example indices among federated clients: IID or Dirichlet label skew.

The Dirichlet scheme follows the common per-class recipe (Hsu et al. 2019; NIID-Bench's
``partition_data``): for each class draw client shares p ~ Dir(alpha), stop giving that class
to clients already holding more than N / num_clients examples, and cut the shuffled class
indices at the cumulative shares. Small alpha -> few classes per client; large alpha -> ~IID.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

from fl_sim.data.dataset import DataError

SCHEMES = ("dirichlet", "iid")
MAX_DIRICHLET_TRIES = 1000


def _validate(labels: np.ndarray, num_clients: int, min_size: int) -> None:
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"data: labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if isinstance(num_clients, bool) or not isinstance(num_clients, numbers.Integral) or num_clients < 1:
        raise DataError(f"federation.num_clients: must be a positive integer, got {num_clients!r}")
    if num_clients > len(labels):
        raise DataError(
            f"federation.num_clients: {num_clients} clients but only {len(labels)} training examples; "
            "use fewer clients or a larger dataset"
        )
    if min_size < 0 or num_clients * min_size > len(labels):
        raise DataError(
            f"federation.num_clients: {num_clients} clients x {min_size} examples each exceeds "
            f"the {len(labels)} training examples"
        )


def _iid(n: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    return list(np.array_split(rng.permutation(n), num_clients))


def _dirichlet_once(
    labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    n = len(labels)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    sizes = np.zeros(num_clients, dtype=np.int64)
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        shares = rng.dirichlet(np.full(num_clients, alpha))
        shares = shares * (sizes < n / num_clients)  # balance: full clients get no more
        total = shares.sum()
        shares = shares / total if total > 0 else np.full(num_clients, 1.0 / num_clients)
        cuts = (np.cumsum(shares) * len(members)).astype(np.int64)[:-1]
        for client, chunk in enumerate(np.split(members, cuts)):
            parts[client].append(chunk)
            sizes[client] += len(chunk)
    return [np.concatenate(p) if p else np.empty(0, dtype=np.int64) for p in parts]


def partition_indices(
    labels: Sequence[int] | np.ndarray,
    num_clients: int,
    *,
    scheme: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Disjoint, sorted int64 index arrays (one per client) covering all examples; deterministic per seed.

    Dirichlet draws are repeated until every client has ``min_size`` examples, at most
    ``MAX_DIRICHLET_TRIES`` times, then a DataError suggests a larger alpha or fewer clients.
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        labels = labels.astype(np.int64)
    _validate(labels, num_clients, min_size)
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        parts = _iid(len(labels), num_clients, rng)
    elif scheme == "dirichlet":
        is_real = isinstance(alpha, numbers.Real) and not isinstance(alpha, bool)
        if not (is_real and math.isfinite(alpha) and alpha > 0):
            raise DataError(f"data.alpha: Dirichlet concentration must be a positive number, got {alpha!r}")
        for _ in range(MAX_DIRICHLET_TRIES):
            parts = _dirichlet_once(labels, num_clients, float(alpha), rng)
            if min(len(p) for p in parts) >= min_size:
                break
        else:
            raise DataError(
                f"data.alpha: after {MAX_DIRICHLET_TRIES} Dirichlet(alpha={alpha}) draws some client still had "
                f"fewer than {min_size} examples; raise data.alpha or lower federation.num_clients"
            )
    else:
        raise DataError(f"data.partition: unknown scheme {scheme!r}; choose one of: {', '.join(SCHEMES)}")
    return [np.sort(p).astype(np.int64) for p in parts]


def label_histogram(
    labels: Sequence[int] | np.ndarray, parts: Sequence[np.ndarray], num_classes: int
) -> np.ndarray:
    """Counts of each class per client, shape (num_clients, num_classes), for skew reports."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"data: labels must lie in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]")
    hist = np.zeros((len(parts), num_classes), dtype=np.int64)
    for client, idx in enumerate(parts):
        hist[client] = np.bincount(labels[np.asarray(idx, dtype=np.int64)], minlength=num_classes)
    return hist
