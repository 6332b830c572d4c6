"""An experiment's ``--set`` overrides, checked before anything runs or is written.

A preset is the schema of its experiment's settings: an override keeps the type of the preset's value
(an integer stays an integer, a list of numbers a list of numbers), counts stay positive, weights stay
finite and not negative, and data, model and attack-preset names are ones this install knows. A bad
value fails here, in one line naming the key, instead of after a dozen cells ran (``batch_sizes=[0]``)
or as a traceback from inside a cell (``batches=abc``).
"""

from __future__ import annotations

import math
from typing import Any

from adversary.attacks import PRESETS
from experiments._inversion import EXPERIMENT_MODELS
from experiments.registry import ExperimentError
from fl_sim.data import available_datasets
from fl_sim.models import available_models

# Integers that may be 0 (a seed, an index, a warm-up); every other integer setting counts something.
MAY_BE_ZERO = frozenset({"seed", "index", "offset", "warmup"})
# Numbers that must be above 0 (a learning rate of 0 trains nothing).
ABOVE_ZERO = frozenset({"lr"})


# How a preset's value is named in an error, bool before int (a bool is an int to Python).
_KINDS = ((bool, "true or false"), (int, "an integer"), (float, "a number"), (str, "a string"), (list, "a list"),
          (dict, "a table"))


def _kind(value: Any) -> str:
    return next((name for kind, name in _KINDS if isinstance(value, kind)), type(value).__name__)


def _same_kind(value: Any, reference: Any) -> bool:
    if isinstance(reference, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(reference, bool)
    if isinstance(reference, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(reference))


def _check_number(key: str, leaf: str, value: int | float) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ExperimentError(f"--set: {key}: must be a finite number, got {value}")
    if leaf in ABOVE_ZERO and value <= 0:
        raise ExperimentError(f"--set: {key}: must be above 0, got {value}")
    if isinstance(value, int) and leaf not in MAY_BE_ZERO and value < 1:
        raise ExperimentError(f"--set: {key}: must be a positive integer (it counts something), got {value}")
    if value < 0:
        raise ExperimentError(f"--set: {key}: must not be negative, got {value}")


def _check_name(key: str, path: tuple[str, ...], value: str) -> None:
    """Names of things the install has: a data set, a model, an attack preset."""
    if len(path) < 2:
        return
    table, leaf = path[-2], path[-1]
    known: list[str] | None = None
    if table == "data" and leaf == "name":
        known = available_datasets()
    elif (table == "model" or (len(path) >= 3 and path[-3] == "models")) and leaf == "name":
        known = [*available_models(), *EXPERIMENT_MODELS]
    elif table == "attack" and leaf == "preset":
        known = list(PRESETS)
    if known is not None and value not in known:
        raise ExperimentError(f"--set: {key}: unknown name {value!r}; choose one of: {', '.join(sorted(known))}")


def _check_value(path: tuple[str, ...], value: Any, reference: Any) -> None:
    """``reference`` None: a value inside an open table (model options, a per-server model), of any type."""
    key = ".".join(path)
    if reference is not None and not _same_kind(value, reference):
        raise ExperimentError(f"--set: {key}: expected {_kind(reference)} as in the preset, got {value!r}")
    if isinstance(value, dict):
        for sub_key, sub_value in value.items():
            if reference and sub_key not in reference:
                raise ExperimentError(f"--set: {key}.{sub_key}: unknown setting; known: {', '.join(sorted(reference))}")
            _check_value((*path, sub_key), sub_value, reference[sub_key] if reference else None)
        return
    if isinstance(value, list):
        if not value and reference:
            raise ExperimentError(f"--set: {key}: must not be empty")
        item_reference = reference[0] if reference else None
        if isinstance(item_reference, dict):  # a list of tables (defense stacks) is the cell's own to check
            return
        for i, item in enumerate(value):
            _check_value((*path[:-1], f"{path[-1]}[{i}]"), item, item_reference)
        return
    if isinstance(value, (int, float)):
        _check_number(key, path[-1].split("[", 1)[0], value)
    elif isinstance(value, str):
        _check_name(key, path, value)


def check_overrides(tree: dict[str, Any], preset: dict[str, Any]) -> None:
    """Raise :class:`ExperimentError` (one line, naming the key) for the first override that does not fit."""
    for key, value in tree.items():
        if key not in preset:
            raise ExperimentError(f"--set: {key}: unknown setting; known: {', '.join(sorted(preset))}")
        _check_value((key,), value, preset[key])
