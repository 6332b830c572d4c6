"""What a malicious server did, on disk: the weights it sent and the aggregates it saw.

``RUN_DIR/adversary/manipulations.jsonl`` has one line per manipulated round
(strategy, its choices, the extra instruction config, the tensors file);
``RUN_DIR/adversary/manipulations/r<round>.safetensors`` holds every tensor sent
for training that round. Under secure aggregation the server still learns the
unmasked mean update of each round (it is what SecAgg+ hands the server), so the
manipulating server writes it to ``aggregates/r<round>.safetensors`` with a JSON
beside it (sampled nodes, total examples) and tells the adversary about it.

The server writes this (it is the adversary); the evaluator reads it to know which
rounds were manipulated (e.g. a vetting defense's detection rate).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from adversary.malicious.server import Broadcast, ServerStrategy

ADVERSARY_DIR = "adversary"
MANIPULATIONS_JSONL = "manipulations.jsonl"
MANIPULATIONS_DIR = "manipulations"
AGGREGATES_DIR = "aggregates"


@dataclass(frozen=True)
class ServerAggregate:
    """One round's unmasked mean update as the server computed it."""

    round: int
    path: str  # safetensors file of the mean update (agreed tensors and inserted block)
    nodes: tuple[int, ...]
    num_examples: int
    protocol: str


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
        agg = ServerAggregate(round, str(path), tuple(int(n) for n in nodes), int(num_examples), protocol)
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


def load_aggregate(path: str | Path) -> tuple[ServerAggregate, dict[str, torch.Tensor]]:
    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["nodes"] = tuple(meta["nodes"])
    return ServerAggregate(**meta), load_file(str(path))


class Manipulation:
    """A strategy bound to a run: records what it sends, and passes server aggregates on."""

    def __init__(self, strategy: ServerStrategy, run_dir: str | Path | None,
                 on_aggregate: Callable[[ServerAggregate], None] | None = None) -> None:
        self.strategy = strategy
        self.log = ManipulationLog(run_dir) if run_dir is not None else None
        self.on_aggregate = on_aggregate
        self.sent: dict[int, Broadcast] = {}

    def broadcast(self, round: int, model: nn.Module) -> Broadcast | None:
        if round in self.sent:
            return self.sent[round]
        out = self.strategy.broadcast(round, model)
        if out is not None:
            self.sent[round] = out
            if self.log is not None:
                self.log.record(round, self.strategy.name, out)
        return out

    def observe(self, round: int, model: nn.Module, gradient: dict[str, torch.Tensor], examples_per_step: int) -> None:
        """An honest round's mean gradient, for strategies that learn from it (fishing's target)."""
        hook = getattr(self.strategy, "observe", None)
        if hook is not None and round not in self.sent:
            hook(round, model, gradient, examples_per_step)

    def aggregated(self, round: int, mean: dict[str, torch.Tensor], nodes: list[int], num_examples: int,
                   protocol: str) -> None:
        """The server's unmasked mean update of a manipulated round (secure aggregation)."""
        if round not in self.sent or self.log is None:
            return
        agg = self.log.record_aggregate(round, mean, nodes, num_examples, protocol)
        if self.on_aggregate is not None:
            self.on_aggregate(agg)
