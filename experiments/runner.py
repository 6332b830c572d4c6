"""Run an experiment: resolve settings, run missing cells, write tables and figures."""

from __future__ import annotations

import fnmatch
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.base import Cell, CellContext, Experiment, Figure, Simulate, Table
from experiments.cache import CellCache, cell_key
from experiments.registry import ExperimentError, get_experiment
from experiments.report import write_html_report
from experiments.settings import check_overrides
from experiments.tables import to_markdown, write_table
from fl_sim.config import apply_override, deep_merge
from fl_sim.rundir import package_versions, write_json_atomic
from fl_sim.safe_paths import output_folder_problem
from fl_sim.validation import exception_line

SETTINGS_JSON = "settings.json"
REPORT_MD = "report.md"


@dataclass
class ExperimentOutcome:
    out_dir: Path
    tables: list[Table]
    figures: list[Figure]
    ran: int
    cached: int


def resolve_settings(name: str, preset: str, overrides: list[str]) -> dict[str, Any]:
    exp = get_experiment(name)
    if preset not in exp.presets:
        raise ExperimentError(f"--preset: {name} has presets {', '.join(exp.presets)}, not {preset!r}")
    tree: dict[str, Any] = {}
    for assignment in overrides:
        apply_override(tree, assignment)
    base = exp.presets[preset]
    check_overrides(tree, base)
    return deep_merge(base, tree)


def experiment_dir(out_root: Path, name: str, preset: str, settings: dict[str, Any]) -> Path:
    """Stable per settings: the same request finds its cached cells again."""
    return out_root / "experiments" / f"{name}-{preset}-{cell_key(settings)[:8]}"


def render(name: str, out_dir: Path, settings: dict[str, Any], results: dict[str, dict[str, Any]]) -> tuple[list[Table], list[Figure]]:
    exp = get_experiment(name)
    tables = exp.tables(settings, results)
    for table in tables:
        write_table(table, out_dir / "tables")
    figures = exp.figures(settings, results, out_dir / "figures")
    report = [f"# {name}: {exp.description}", ""]
    report += [to_markdown(t) for t in tables]
    report += [f"![{f.title}]({f.path.relative_to(out_dir)})\n" for f in figures]
    (out_dir / REPORT_MD).write_text("\n".join(report))

    write_html_report(out_dir, f"{name}: {exp.description}", tables, figures, settings=settings)
    return tables, figures


def run_experiment(
    name: str,
    preset: str = "smoke",
    overrides: list[str] | None = None,
    out_root: str | Path = "runs",
    progress: Callable[[str], None] = lambda _msg: None,
    only: list[str] | None = None,
    simulate: Simulate | None = None,
) -> ExperimentOutcome:
    """Run the missing cells (or, with ``only``, those whose names match one of the globs; cached
    cells of the same settings are reported too, so split runs merge in one directory).

    ``simulate`` runs a federated simulation for the cells that need one (the app layer's
    ``run_simulation``; experiments sit below the app and are handed it)."""
    settings = resolve_settings(name, preset, overrides or [])
    exp = get_experiment(name)
    cells = exp.cells(settings)
    if only:
        chosen = [c for c in cells if any(fnmatch.fnmatchcase(c.name, pattern) for pattern in only)]
        if not chosen:
            raise ExperimentError(f"--only: no cell of {name} --preset {preset} matches {', '.join(only)}; "
                                  f"cells look like {', '.join(c.name for c in cells[:3])}")
    else:
        chosen = cells
    problem = output_folder_problem(Path(out_root))
    if problem:
        raise ExperimentError(f"--out: {problem}")
    out_dir = experiment_dir(Path(out_root), name, preset, settings)
    created = _first_missing(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _run_cells(exp, name, preset, settings, overrides or [], out_dir, cells, chosen, progress, simulate)
    except BaseException:
        if created is not None and not any((out_dir / "cells").glob("*.json")):
            shutil.rmtree(created, ignore_errors=True)  # nothing finished: leave no folder behind a failed start
        raise


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (None if ``path`` exists)."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            return missing
        missing = folder
    return missing


def _run_cells(exp: Experiment, name: str, preset: str, settings: dict[str, Any], overrides: list[str], out_dir: Path,
               cells: list[Cell], chosen: list[Cell], progress: Callable[[str], None], simulate: Simulate | None) -> ExperimentOutcome:
    write_json_atomic(out_dir / SETTINGS_JSON, {"experiment": name, "preset": preset, "settings": settings,
                                                 "overrides": overrides, "versions": package_versions()})
    cache = CellCache(out_dir / "cells")
    results: dict[str, dict[str, Any]] = {}
    ran = cached = 0
    for i, cell in enumerate(cells, 1):
        key = cell_key({"experiment": name, "cell": cell.name, **cell.params})
        hit = cache.get(key)
        if hit is not None:
            results[cell.name] = hit["result"]
            cached += 1
            continue
        if cell not in chosen:
            continue
        progress(f"[{i}/{len(cells)}] {cell.name}")
        start = time.perf_counter()
        workdir = out_dir / "work" / key
        workdir.mkdir(parents=True, exist_ok=True)
        result = exp.run_cell(cell, workdir, CellContext(progress, simulate))
        cache.put(key, {"cell": cell.name, "params": cell.params, "result": result, "seconds": time.perf_counter() - start})
        results[cell.name] = result
        ran += 1
    tables, figures = render(name, out_dir, settings, results)
    return ExperimentOutcome(out_dir, tables, figures, ran, cached)


def report_experiment(out_dir: str | Path) -> tuple[list[Table], list[Figure]]:
    """Re-render tables and figures from an experiment directory's cached cells."""

    out_dir = Path(out_dir)
    meta_path = out_dir / SETTINGS_JSON
    if not meta_path.is_file():
        raise ExperimentError(f"RUN_DIR: {out_dir} is not an experiment directory (no {SETTINGS_JSON})")
    meta = _read_json(meta_path)
    if not isinstance(meta.get("experiment"), str) or not isinstance(meta.get("settings"), dict):
        raise ExperimentError(f"RUN_DIR: {meta_path} is damaged: it names no experiment and settings")
    results = {}
    for path in sorted((out_dir / "cells").glob("*.json")):
        payload = _read_json(path)
        if not isinstance(payload.get("cell"), str) or not isinstance(payload.get("result"), dict):
            raise ExperimentError(f"RUN_DIR: {path} is damaged: it holds no cell and result")
        results[payload["cell"]] = payload["result"]
    try:
        return render(meta["experiment"], out_dir, meta["settings"], results)
    except (KeyError, TypeError, ValueError) as exc:
        raise ExperimentError(f"RUN_DIR: {out_dir}: its settings or cells do not fit {meta['experiment']!r} "
                              f"({exception_line(exc)}); were they edited?") from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExperimentError(f"RUN_DIR: {path} cannot be read ({exception_line(exc)})") from None
    if not isinstance(value, dict):
        raise ExperimentError(f"RUN_DIR: {path} is damaged: not a JSON object")
    return value
