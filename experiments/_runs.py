"""The run config of an experiment cell that runs a federated simulation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fl_sim.config import RunConfig, apply_override, build_config, deep_merge


def cell_run_config(params: dict[str, Any], workdir: Path, sections: dict[str, Any], extra: list[str] = ()) -> RunConfig:
    """The cell's run config: its data, model and defenses (``stack``), ``sections`` merged in, then the
    cell's own ``key=value`` settings (``extra``), which win; the inline engine, output under ``workdir``."""
    tree = deep_merge({
        "seed": params["seed"],
        "name": params["kind"],
        "out_dir": str(workdir),
        "data": {"name": params["data"]["name"], **({"root": params["data"]["root"]} if params["data"].get("root") else {})},
        "model": {"name": params["model"]["name"], "options": params["model"].get("options", {})},
        "defenses": params["stack"],
        "engine": {"name": "inline"},
    }, sections)
    for item in extra:
        apply_override(tree, item)
    return build_config(tree)
