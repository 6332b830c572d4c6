"""Name -> loader registry, so new datasets plug in with a decorator instead of an if/elif chain."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Protocol

from fl_sim.data.dataset import DataError, Dataset


class Loader(Protocol):
    """A dataset loader; ``test_fraction`` only matters for sources without an official test set."""

    def __call__(
        self, *, root: Path | None, seed: int, test_fraction: float, image_size: int | None
    ) -> Dataset: ...


_LOADERS: dict[str, Loader] = {}


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Decorator that makes a loader available to ``load_dataset(name)``."""

    def decorate(loader: Loader) -> Loader:
        if name in _LOADERS:
            raise ValueError(f"dataset {name!r} is already registered")
        _LOADERS[name] = loader
        return loader

    return decorate


def _registered() -> dict[str, Loader]:
    """The loaders (``fl_sim.data`` imports its sources, which register themselves)."""
    return _LOADERS


def available_datasets() -> list[str]:
    """Sorted names accepted by ``load_dataset``."""
    return sorted(_registered())


def load_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    image_size: int | None = None,
) -> Dataset:
    """Load a dataset by name; results are cached per arguments, so treat its tensors as read-only."""
    loaders = _registered()
    if name not in loaders:
        raise DataError(f"data.name: unknown dataset {name!r}; choose one of: {', '.join(sorted(loaders))}")
    if not _is_real(test_fraction) or not (math.isfinite(test_fraction) and 0.0 < test_fraction < 1.0):
        raise DataError(f"data.test_fraction: must be a number strictly between 0 and 1, got {test_fraction!r}")
    if image_size is not None and not (_is_integer(image_size) and image_size >= 1):
        raise DataError(f"data.image_size: must be a positive integer or unset, got {image_size!r}")
    if not _is_integer(seed):
        raise DataError(f"data.seed: must be an integer, got {seed!r}")
    root_key = None if root is None else str(Path(root).expanduser())
    size_key = None if image_size is None else int(image_size)
    return _load_cached(name, root_key, int(seed), float(test_fraction), size_key)


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@lru_cache(maxsize=8)
def _load_cached(name: str, root: str | None, seed: int, test_fraction: float, image_size: int | None) -> Dataset:
    loader = _LOADERS[name]
    return loader(
        root=None if root is None else Path(root), seed=seed, test_fraction=test_fraction, image_size=image_size
    )


def clear_dataset_cache() -> None:
    """Drop cached datasets (e.g. after installing data files, or to free memory)."""
    _load_cached.cache_clear()
