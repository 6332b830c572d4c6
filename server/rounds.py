"""What both of the server's loops share: who takes part, how rounds are scored, what is logged.

The Message-API loop (:mod:`server.loop`) and the SecAgg+ workflow (:mod:`server.secagg`)
draw the same clients, average evaluation replies the same way, and record each round
in ``metrics.jsonl`` and the final global model in ``final_model.safetensors``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from safetensors.torch import save_file

from fl_sim.config import RunConfig
from fl_sim.node_ids import node_ids_for
from fl_sim.rundir import METRICS_JSONL
from fl_sim.wire import EVAL_ACC, EVAL_LOSS

FINAL_WEIGHTS = "final_model.safetensors"


class ClientFailure(RuntimeError):
    """A client answered with an error instead of content."""


@dataclass
class RoundStats:
    round: int
    clients: int
    train_loss: float
    eval_loss: float | None  # None: not evaluated this round (eval.every)
    eval_acc: float | None
    wall_s: float
    client_compute_s: float
    eval_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class TrainingResult:
    rounds: list[RoundStats] = field(default_factory=list)
    final_state: dict[str, torch.Tensor] = field(default_factory=dict)


def sample_clients(seed: int, rnd: int, nodes: Sequence[int], count: int) -> list[int]:
    """The clients of round ``rnd``: a seeded draw over the sorted node ids (the same in both loops)."""
    nodes = sorted(nodes)
    picked = np.random.default_rng([seed, rnd]).choice(len(nodes), size=count, replace=False)
    return sorted(nodes[i] for i in picked)


def check_node_ids(config: RunConfig, nodes: Iterable[int]) -> list[int]:
    """The registered node ids, which must be the seeded ones (sampling and the ground truth rely on them)."""
    nodes = sorted(nodes)
    expected = sorted(node_ids_for(config.seed, config.federation.num_clients))
    if nodes != expected:
        raise RuntimeError(f"the simulation registered node ids {nodes[:3]}... instead of the seeded {expected[:3]}...: "
                           "this Flower version draws node ids differently; fl-sim cannot make runs reproducible with it")
    return nodes


def mean_eval(results: Iterable[tuple[dict[str, Any], int]]) -> tuple[float, float]:
    """Examples-weighted test loss and accuracy over the clients' evaluation replies (metrics, examples)."""
    results = list(results)
    total = sum(n for _, n in results)
    loss = sum(float(m[EVAL_LOSS]) * n for m, n in results) / total
    acc = sum(float(m[EVAL_ACC]) * n for m, n in results) / total
    return loss, acc


def mean_train_loss(results: Iterable[tuple[float, int]]) -> float:
    """Examples-weighted training loss; nan when every client refused the round (nothing was trained)."""
    results = list(results)
    total = sum(n for _, n in results)
    return sum(loss * n for loss, n in results) / total if total else float("nan")


class RoundLog:
    """Appends each round to the result and ``metrics.jsonl``, prints it, and keeps the final model."""

    def __init__(self, config: RunConfig, run_dir: Path | None, console: Console | None = None) -> None:
        self.rounds = config.federation.rounds
        self.run_dir = run_dir
        self.console = console or Console(stderr=True)
        self.result = TrainingResult()

    def record(self, stats: RoundStats) -> None:
        self.result.rounds.append(stats)
        if self.run_dir is not None:
            with (self.run_dir / METRICS_JSONL).open("a") as fh:
                fh.write(json.dumps(stats.as_dict()) + "\n")
        evaluated = (f"accuracy {stats.eval_acc:6.2%}  test loss {stats.eval_loss:.4f}" if stats.eval_acc is not None
                     else f"accuracy {'-':>6}  test loss {'-':>6}")
        self.console.print(f"round {stats.round:>3}/{self.rounds}  {evaluated}  train loss {stats.train_loss:.4f}  "
                           f"{stats.wall_s:5.2f} s")

    def finish(self, state: dict[str, torch.Tensor]) -> TrainingResult:
        self.result.final_state = {k: v.clone() for k, v in state.items()}
        if self.run_dir is not None:
            save_file({k: v.contiguous() for k, v in self.result.final_state.items()}, str(self.run_dir / FINAL_WEIGHTS))
        return self.result


def evaluated_in(config: RunConfig, rnd: int) -> bool:
    """Whether round ``rnd`` evaluates the global model: every ``eval.every``-th round, and always the last."""
    return rnd % config.eval.every == 0 or rnd == config.federation.rounds


def elapsed(start: float) -> float:
    return time.perf_counter() - start
