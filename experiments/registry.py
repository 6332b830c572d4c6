"""Experiments by name."""

from __future__ import annotations

from collections.abc import Callable

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
    from experiments import tradeoff  # noqa: F401  (registers itself)
