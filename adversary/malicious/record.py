"""What a malicious server did, on disk: the weights it sent and the aggregates it saw.

``RUN_DIR/adversary/manipulations.jsonl`` has one line per manipulated round
(strategy, its choices, the extra instruction config, the tensors file);
``RUN_DIR/adversary/manipulations/r<round>.safetensors`` holds every tensor sent
for training that round. Under secure aggregation the server still learns the
unmasked mean update of each round (it is what SecAgg+ hands the server), so the
manipulating server writes it to ``aggregates/r<round>.safetensors`` with a JSON
beside it (sampled nodes, total examples) and tells the adversary about it.

The server writes this (it is the adversary) and reads it back to recover images
(:class:`ServerRecord`); the evaluator reads it to know which rounds were manipulated
(e.g. a vetting defense's detection rate).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from adversary.malicious.server import Broadcast
from adversary.roles.base import ServerAggregate

ADVERSARY_DIR = "adversary"
MANIPULATIONS_JSONL = "manipulations.jsonl"
MANIPULATIONS_DIR = "manipulations"
AGGREGATES_DIR = "aggregates"


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


class ManipulationLog:
    def __init__(self, run_dir: str | Path) -> None:
        self.root = Path(run_dir) / ADVERSARY_DIR

    def record(self, round: int, strategy: str, broadcast: Broadcast) -> Path:
        folder = self.root / MANIPULATIONS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"r{round}.safetensors"
        _atomic_save(broadcast.state, path)
        entry = {"round": round, "strategy": strategy, "info": broadcast.info, "config": broadcast.config,
                 "tensors": str(path.relative_to(self.root.parent))}
        with (self.root / MANIPULATIONS_JSONL).open("a") as fh:
            fh.write(json.dumps(entry, default=str) + "\n")
        return path

    def record_aggregate(self, round: int, mean: dict[str, torch.Tensor], nodes: list[int], num_examples: int,
                         protocol: str) -> ServerAggregate:
        folder = self.root / AGGREGATES_DIR
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"r{round}.safetensors"
        _atomic_save({k: v.to(torch.float32) for k, v in mean.items()}, path)
        agg = ServerAggregate(round, tuple(int(n) for n in nodes), int(num_examples), protocol)
        (folder / f"r{round}.json").write_text(json.dumps(agg.__dict__))
        return agg


def manipulated_rounds(run_dir: str | Path) -> dict[int, dict[str, Any]]:
    """Round -> its manipulation entry (empty when the server was honest)."""
    path = Path(run_dir) / ADVERSARY_DIR / MANIPULATIONS_JSONL
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            out[int(entry["round"])] = entry
    return out


class ServerRecord:
    """The malicious server's own record, read back for its recoveries: what it sent each manipulated
    round and, under secure aggregation, the unmasked means it recovered. Files are found by round
    inside ``RUN_DIR/adversary/``, never by a path written in the record."""

    def __init__(self, run_dir: str | Path) -> None:
        self.root = Path(run_dir) / ADVERSARY_DIR
        self._entries = manipulated_rounds(run_dir)

    def entry(self, round: int) -> dict[str, Any]:
        """The manipulation of ``round`` (strategy, its choices, the extra instruction config); {} if honest."""
        return self._entries.get(round, {})

    def sent(self, round: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The tensors and the extra instruction config the server sent for training in ``round``."""
        path = self.root / MANIPULATIONS_DIR / f"r{int(round)}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"RUN_DIR: the malicious server's record of round {round} is missing ({path})")
        return load_file(str(path)), dict(self.entry(round).get("config", {}))

    def aggregate(self, round: int) -> tuple[ServerAggregate, dict[str, torch.Tensor]]:
        """The unmasked mean update of ``round`` the server recovered under secure aggregation."""
        path = self.root / AGGREGATES_DIR / f"r{int(round)}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"RUN_DIR: no recorded aggregate of round {round} ({path})")
        meta = json.loads(path.with_suffix(".json").read_text())
        meta["nodes"] = tuple(meta["nodes"])
        meta.pop("path", None)
        return ServerAggregate(**meta), load_file(str(path))
