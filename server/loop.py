"""The server's Message-API round loop: sample, send, aggregate, evaluate, log.

It talks only to a Flower ``Grid`` and to a :class:`fl_sim.rounds.RoundStrategy`:
the tap wraps that Grid, a malicious server wraps that strategy, and the same loop
runs under the Ray engine and the inline engine.
"""

from __future__ import annotations

import time
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from fl_sim.config import RunConfig
from fl_sim.rounds import RoundPlan, RoundStrategy, RoundUpdate
from fl_sim.wire import ARRAYS, COMPUTE_S, CONFIG, METRICS, NUM_EXAMPLES, TRAIN_LOSS
from server.aggregation import Reply, replies_mean
from server.rounds import (
    ClientFailure,
    RoundLog,
    RoundStats,
    TrainingResult,
    check_node_ids,
    elapsed,
    evaluated_in,
    mean_eval,
    mean_train_loss,
    sample_clients,
)


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
        out.append(Reply(msg.content, int(msg.content[METRICS][NUM_EXAMPLES])))
    return out


def _messages(plan: RoundPlan, nodes: list[int], rnd: int, message_type: str) -> list[Message]:
    messages = []
    for node in nodes:
        content = RecordDict({ARRAYS: ArrayRecord({k: v.contiguous() for k, v in plan.tensors.items()}),
                              CONFIG: ConfigRecord(dict(plan.config))})
        messages.append(Message(content=content, dst_node_id=node, message_type=message_type, group_id=str(rnd)))
    return messages


def _evaluate(grid: Grid, strategy: RoundStrategy, nodes: list[int], rnd: int) -> tuple[float, float]:
    plan = strategy.configure_evaluate(rnd)
    if plan is None:
        return strategy.evaluate_global()
    replies = _replies(list(grid.send_and_receive(_messages(plan, nodes, rnd, "evaluate"))), len(nodes))
    return mean_eval((r.content[METRICS], r.num_examples) for r in replies)


def run_rounds(config: RunConfig, grid: Grid, strategy: RoundStrategy, run_dir: Path | None,
               console: Console | None = None) -> TrainingResult:
    """Every round of the run on ``grid``; returns the per-round statistics and the final global state."""
    fed = config.federation
    nodes = wait_for_nodes(grid, fed.num_clients)
    if len(nodes) < fed.num_clients:
        raise RuntimeError(f"only {len(nodes)} of {fed.num_clients} client nodes registered")
    nodes = check_node_ids(config, nodes)
    log = RoundLog(config, run_dir, console)
    with Progress(
        TextColumn("[bold]round {task.completed}/{task.total}"),
        BarColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=log.console,
        transient=True,
    ) as progress:
        bar = progress.add_task("starting", total=fed.rounds)
        for rnd in range(1, fed.rounds + 1):
            start = time.perf_counter()
            sampled = sample_clients(config.seed, rnd, nodes, fed.sampled_per_round)
            plan = strategy.configure_train(rnd)
            replies = _replies(list(grid.send_and_receive(_messages(plan, sampled, rnd, "train"))), len(sampled))
            total = sum(r.num_examples for r in replies)
            strategy.aggregate_train(RoundUpdate(rnd, replies_mean(replies) if total else {}, total, tuple(sampled),
                                                 fed.protocol))
            eval_start = time.perf_counter()
            eval_loss, eval_acc = _evaluate(grid, strategy, nodes, rnd) if evaluated_in(config, rnd) else (None, None)
            eval_s = elapsed(eval_start)
            log.record(RoundStats(
                round=rnd,
                clients=len(replies),
                train_loss=mean_train_loss((float(r.content[METRICS][TRAIN_LOSS]), r.num_examples) for r in replies),
                eval_loss=eval_loss,
                eval_acc=eval_acc,
                wall_s=elapsed(start),
                client_compute_s=sum(float(r.content[METRICS][COMPUTE_S]) for r in replies),
                eval_s=eval_s,
            ))
            progress.update(bar, advance=1, description=f"acc {eval_acc:.2%}" if eval_acc is not None else "")
    return log.finish(strategy.global_state())
