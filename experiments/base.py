"""What an experiment is: presets, cells, and tables built from the cells' results."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fl_sim.config import RunConfig
from server.rounds import TrainingResult


@dataclass(frozen=True)
class Cell:
    """One separately cached unit of work; ``params`` fully determine its result."""

    name: str
    params: dict[str, Any]


@dataclass
class Table:
    name: str
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Figure:
    name: str
    title: str
    path: Path


class SimulationOutcome(Protocol):
    run_dir: Path
    result: TrainingResult


class Simulate(Protocol):
    """Runs one federated simulation: the app layer hands its runner to the experiments that need one."""

    def __call__(self, config: RunConfig, *, quiet: bool = False) -> SimulationOutcome: ...


@dataclass(frozen=True)
class CellContext:
    """What a cell gets besides its parameters: where to report progress, and how to run a simulation."""

    progress: Callable[[str], None]
    simulate: Simulate | None = None

    def simulation(self) -> Simulate:
        if self.simulate is None:
            raise RuntimeError("this experiment runs federated simulations: run it with a simulation runner "
                               "(fl-sim experiment run, or run_experiment(..., simulate=app.simulation.run_simulation))")
        return self.simulate


class Experiment(Protocol):
    name: str
    description: str
    presets: dict[str, dict[str, Any]]

    def cells(self, settings: dict[str, Any]) -> list[Cell]: ...

    def run_cell(self, cell: Cell, workdir: Path, ctx: CellContext) -> dict[str, Any]: ...

    def tables(self, settings: dict[str, Any], results: dict[str, dict[str, Any]]) -> list[Table]: ...

    def figures(self, settings: dict[str, Any], results: dict[str, dict[str, Any]], out_dir: Path) -> list[Figure]: ...
