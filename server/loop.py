"""The server's round loop: sample, send, aggregate, evaluate, log.

It talks only to a Flower ``Grid``: the tap wraps that Grid, and the same loop
runs under the Ray engine and the inline engine.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from safetensors.torch import save_file

from clients.training import evaluate
from fl_sim.config import RunConfig
from fl_sim.rundir import METRICS_JSONL
from fl_sim.task import load_task
from server.strategies import Reply, aggregate

FINAL_WEIGHTS = "final_model.safetensors"


class ClientFailure(RuntimeError):
    """A client answered with an error instead of content."""


@dataclass
class RoundStats:
    round: int
    clients: int
    train_loss: float
    eval_loss: float
    eval_acc: float
    wall_s: float
    client_compute_s: float
    eval_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class TrainingResult:
    rounds: list[RoundStats] = field(default_factory=list)
    final_state: dict[str, torch.Tensor] = field(default_factory=dict)


def wait_for_nodes(grid: Grid, expected: int, timeout: float = 120.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= expected or time.monotonic() > deadline:
            return nodes
        time.sleep(0.1)


def _replies(messages: list[Message], expected: int) -> list[Reply]:
    if len(messages) < expected:
        raise ClientFailure(f"only {len(messages)} of {expected} clients answered")
    out = []
    for msg in messages:
        if msg.has_error():
            raise ClientFailure(f"client {msg.metadata.src_node_id} failed: {msg.error.reason}")
        out.append(Reply(msg.content, int(msg.content["metrics"]["num-examples"])))
    return out


class FederatedLoop:
    def __init__(self, config: RunConfig, run_dir: Path | None, console: Console | None = None,
                 manipulation: Any = None) -> None:
        self.config = config
        # A malicious server's manipulation of what it sends (adversary.malicious.server); None = honest.
        self.manipulation = manipulation
        self.run_dir = run_dir
        self.task = load_task(config)
        self.model = self.task.new_model()
        self.shared_keys = self.task.shared_keys(self.model)
        sd = self.model.state_dict()
        self.state = {k: sd[k].clone() for k in self.shared_keys}
        self.console = console or Console(stderr=True)

    def sent_state(self, rnd: int, message_type: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The tensors and extra config sent for ``message_type`` in round ``rnd``: the honest
        global model, or a malicious server's broadcast (its agreed tensors, then any inserted
        block's, in that order)."""
        if self.manipulation is None or message_type != "train":
            return self.state, {}
        self.model.load_state_dict(self.state, strict=False)
        broadcast = self.manipulation.broadcast(rnd, self.model)
        if broadcast is None:
            return self.state, {}
        own = set(self.model.state_dict())
        keys = [*self.shared_keys, *(k for k in broadcast.state if k not in own)]
        return {k: broadcast.state[k] for k in keys}, dict(broadcast.config)

    def manipulated(self, rnd: int) -> bool:
        """A malicious server sent a model of its own making this round: the replies answer that
        model, not the global one, so it keeps its global model as it was."""
        return self.manipulation is not None and rnd in self.manipulation.sent

    def observe_honest_round(self, rnd: int, before: dict[str, torch.Tensor]) -> None:
        """Show a malicious server's strategy what it learns from an honest round: the change of its
        global model as a mean gradient per local step, ``(w_before - w_after) / (lr * steps)``."""
        if self.manipulation is None:
            return
        fed = self.config.federation
        steps = fed.local_steps if fed.protocol == "fedavg" else 1
        gradient = {k: (before[k].double() - v.double()) / (fed.lr * steps) for k, v in self.state.items()
                    if v.is_floating_point()}
        self.model.load_state_dict(before, strict=False)
        self.manipulation.observe(rnd, self.model, gradient, fed.batch_size)

    def round_config(self, rnd: int) -> dict[str, Any]:
        fed = self.config.federation
        return {
            "server-round": rnd,
            "lr": fed.lr,
            "local-steps": fed.local_steps if fed.protocol == "fedavg" else 1,
            "batch-size": fed.batch_size,
            "protocol": fed.protocol,
        }

    def _instructions(self, nodes: list[int], rnd: int, message_type: str) -> list[Message]:
        sent, extra = self.sent_state(rnd, message_type)
        messages = []
        for node in nodes:
            content = RecordDict(
                {
                    "arrays": ArrayRecord({k: v.contiguous() for k, v in sent.items()}),
                    "config": ConfigRecord({**self.round_config(rnd), **extra}),
                }
            )
            messages.append(Message(content=content, dst_node_id=node, message_type=message_type, group_id=str(rnd)))
        return messages

    def _evaluate(self, grid: Grid, nodes: list[int], rnd: int) -> tuple[float, float]:
        if self.task.eval_on_clients(self.model):
            replies = _replies(list(grid.send_and_receive(self._instructions(nodes, rnd, "evaluate"))), len(nodes))
            total = sum(r.num_examples for r in replies)
            loss = sum(float(r.content["metrics"]["eval-loss"]) * r.num_examples for r in replies) / total
            acc = sum(float(r.content["metrics"]["eval-acc"]) * r.num_examples for r in replies) / total
            return loss, acc
        return self.evaluate_global()

    def evaluate_global(self) -> tuple[float, float]:
        """Server-side test loss and accuracy of the global model."""
        self.model.load_state_dict(self.state, strict=False)
        x, y = self.task.test_split
        return evaluate(self.model, x, y, self.config.eval.batch_size)

    def record_round(self, stats: RoundStats, result: TrainingResult) -> None:
        """Append a round's statistics to the result and metrics.jsonl, and print them."""
        result.rounds.append(stats)
        if self.run_dir is not None:
            with (self.run_dir / METRICS_JSONL).open("a") as fh:
                fh.write(json.dumps(stats.as_dict()) + "\n")
        self.console.print(
            f"round {stats.round:>3}/{self.config.federation.rounds}  accuracy {stats.eval_acc:6.2%}"
            f"  test loss {stats.eval_loss:.4f}  train loss {stats.train_loss:.4f}  {stats.wall_s:5.2f} s"
        )

    def finish(self, result: TrainingResult) -> TrainingResult:
        """Keep the final global state in the result and write it to final_model.safetensors."""
        result.final_state = {k: v.clone() for k, v in self.state.items()}
        if self.run_dir is not None:
            save_file({k: v.contiguous() for k, v in result.final_state.items()}, str(self.run_dir / FINAL_WEIGHTS))
        return result

    def run(self, grid: Grid) -> TrainingResult:
        fed = self.config.federation
        nodes = wait_for_nodes(grid, fed.num_clients)
        if len(nodes) < fed.num_clients:
            raise RuntimeError(f"only {len(nodes)} of {fed.num_clients} client nodes registered")
        result = TrainingResult()
        with Progress(
            TextColumn("[bold]round {task.completed}/{task.total}"),
            BarColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        ) as progress:
            bar = progress.add_task("starting", total=fed.rounds)
            for rnd in range(1, fed.rounds + 1):
                start = time.perf_counter()
                rng = np.random.default_rng([self.config.seed, rnd])
                picked = rng.choice(len(nodes), size=fed.sampled_per_round, replace=False)
                sampled = sorted(nodes[i] for i in picked)
                replies = _replies(list(grid.send_and_receive(self._instructions(sampled, rnd, "train"))), len(sampled))
                if not self.manipulated(rnd):
                    before = self.state
                    self.state = aggregate(self.state, replies, fed)
                    self.observe_honest_round(rnd, before)
                eval_start = time.perf_counter()
                eval_loss, eval_acc = self._evaluate(grid, nodes, rnd)
                eval_s = time.perf_counter() - eval_start
                total = sum(r.num_examples for r in replies)
                stats = RoundStats(
                    round=rnd,
                    clients=len(replies),
                    # nan when every client refused the round (nothing was trained)
                    train_loss=sum(float(r.content["metrics"]["train-loss"]) * r.num_examples for r in replies) / total
                    if total else float("nan"),
                    eval_loss=eval_loss,
                    eval_acc=eval_acc,
                    wall_s=time.perf_counter() - start,
                    client_compute_s=sum(float(r.content["metrics"]["compute-s"]) for r in replies),
                    eval_s=eval_s,
                )
                self.record_round(stats, result)
                progress.update(bar, advance=1, description=f"acc {eval_acc:.2%}")
        return self.finish(result)
