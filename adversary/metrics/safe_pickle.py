"""Load pickled dicts of numpy arrays without letting the pickle run code.

Plain ``pickle.load`` executes whatever callables a file names; the LPIPS backbone
checkpoints come from a third-party sdist, so only numpy's array reconstruction is admitted.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

try:  # numpy >= 2 moved the implementation; pickles still name numpy.core.
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler whose only reachable globals rebuild numpy arrays and dtypes."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only numpy arrays are allowed"
            ) from None


def _check_tree(obj: Any, where: str = "") -> None:
    """Reject anything but nested str-keyed dicts of numeric arrays (no object dtype)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise pickle.UnpicklingError(f"non-string key {key!r} at {where or '/'}")
            _check_tree(value, f"{where}/{key}")
    elif isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise pickle.UnpicklingError(f"object array at {where}")
    else:
        raise pickle.UnpicklingError(f"unexpected {type(obj).__name__} at {where}")


def load_numpy_pickle(path: str | Path) -> dict[str, Any]:
    """Read a pickle holding nested dicts of numpy arrays, refusing anything else."""
    with open(path, "rb") as fh:
        obj = NumpyOnlyUnpickler(fh).load()
    if not isinstance(obj, dict):
        raise pickle.UnpicklingError(f"{path}: expected a dict, got {type(obj).__name__}")
    _check_tree(obj)
    return obj
