"""What an experiment is: presets, cells, and tables built from the cells' results."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


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


class Experiment(Protocol):
    name: str
    description: str
    presets: dict[str, dict[str, Any]]

    def cells(self, settings: dict[str, Any]) -> list[Cell]: ...

    def run_cell(self, cell: Cell, workdir: Path, progress: Callable[[str], None]) -> dict[str, Any]: ...

    def tables(self, settings: dict[str, Any], results: dict[str, dict[str, Any]]) -> list[Table]: ...

    def figures(self, settings: dict[str, Any], results: dict[str, dict[str, Any]], out_dir: Path) -> list[Figure]: ...
