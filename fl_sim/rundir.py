"""Run directories: every result lives next to what is needed to re-run it.

A run directory holds the resolved config (TOML and JSON), the seed, package
versions, the git revision and the command line, written before any work starts.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import tomli_w

from fl_sim.config import RunConfig, config_from_json

PACKAGES = ("fl-sim", "torch", "torchvision", "flwr", "ray", "numpy", "lpips", "safetensors", "pydantic")

CONFIG_TOML = "config.toml"
CONFIG_JSON = "config.json"
META_JSON = "meta.json"
METRICS_JSONL = "metrics.jsonl"
SUMMARY_JSON = "summary.json"
PARTITIONS_JSON = "partitions.json"
SIMULATION_JSON = "simulation.json"  # audits: which simulated node holds which partition (evaluation only)


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_revision() -> str | None:
    """The source tree's commit (with '-dirty' when modified), if it is a git checkout."""
    src = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def write_json_atomic(path: Path, payload: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def _strip_none(tree: Any) -> Any:
    """TOML has no null: drop unset optional keys (they re-load as their default)."""
    if isinstance(tree, dict):
        return {k: _strip_none(v) for k, v in tree.items() if v is not None}
    if isinstance(tree, list):
        return [_strip_none(v) for v in tree]
    return tree


def make_run_dir(out_dir: str | Path, name: str, resolved: dict[str, Any], *, seed: int, command: list[str] | None = None) -> Path:
    """Make a fresh, uniquely named run directory and write the provenance files into it."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(out_dir) / f"{name}-{stamp}-{secrets.token_hex(2)}"
    run_dir.mkdir(parents=True, exist_ok=False)
    (run_dir / CONFIG_TOML).write_text(tomli_w.dumps(_strip_none(resolved)))
    write_json_atomic(run_dir / CONFIG_JSON, resolved)
    write_json_atomic(
        run_dir / META_JSON,
        {
            "seed": seed,
            "created": _dt.datetime.now().isoformat(timespec="seconds"),
            "versions": package_versions(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "git_revision": git_revision(),
            "command": command if command is not None else sys.argv,
        },
    )
    return run_dir


def create_run_dir(config: RunConfig, *, command: list[str] | None = None) -> Path:
    return make_run_dir(config.out_dir, config.name, config.to_dict(), seed=config.seed, command=command)


def load_run_config(run_dir: str | Path) -> RunConfig:
    return config_from_json((Path(run_dir) / CONFIG_JSON).read_text())


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / SUMMARY_JSON).read_text())
