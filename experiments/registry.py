"""Experiments by name."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path

from experiments.base import Experiment

EXPERIMENTS: dict[str, Experiment] = {}


class ExperimentError(ValueError):
    """A user-facing problem with an experiment request; one line."""


def register(factory: Callable[[], Experiment]) -> Callable[[], Experiment]:
    exp = factory()
    EXPERIMENTS[exp.name] = exp
    return factory


def get_experiment(name: str) -> Experiment:
    _load_all()
    if name not in EXPERIMENTS:
        raise ExperimentError(f"NAME: unknown experiment {name!r}; choose one of: {', '.join(sorted(EXPERIMENTS))}")
    return EXPERIMENTS[name]


def list_experiments() -> list[Experiment]:
    _load_all()
    return [EXPERIMENTS[k] for k in sorted(EXPERIMENTS)]


def _load_all() -> None:
    """Import every experiment module of the package; each registers itself."""
    infrastructure = {"base", "cache", "registry", "runner", "tables", "report"}
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name not in infrastructure and not info.name.startswith("_"):
            importlib.import_module(f"experiments.{info.name}")
