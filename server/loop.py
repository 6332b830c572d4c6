"""The server's Message-API round loop: sample, send, aggregate, evaluate, log.

It talks only to a Flower ``Grid`` and to a :class:`fl_sim.rounds.RoundStrategy`:
the tap wraps that Grid, a malicious server wraps that strategy, and the same loop
runs under the Ray engine and the inline engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from fl_sim.config import RunConfig
from fl_sim.rounds import RoundPlan, RoundStrategy, RoundUpdate
from fl_sim.wire import ARRAYS, COMPUTE_S, CONFIG, METRICS, NUM_EXAMPLES, TRAIN_LOSS
from server.aggregation import RunningMean
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


PULL_CHUNK = 4  # replies pulled (and, inline, clients run) at a time: a round holds a few models, not all


def _gather(grid: Grid, messages: list[Message], on_reply: Callable[[Message], None]) -> None:
    """Send ``messages`` and hand each reply to ``on_reply`` as it arrives, a few at a time, so
    the replies need not all be in memory at once (Grid.send_and_receive returns them together).

    Every poll asks for every pending reply, a chunk at a time: Flower's Ray backend runs clients in
    its own order (by node), so waiting for the first few of ours let the others' replies pile up
    in the link state (a hundred ResNet-18 models, 4.5 GB); the inline engine runs a chunk's
    clients when it is pulled, so it still holds a chunk's replies at most."""
    pending = list(grid.push_messages(messages))
    answered = 0
    while pending:
        done: set[str] = set()
        for start in range(0, len(pending), PULL_CHUNK):
            got = list(grid.pull_messages(pending[start:start + PULL_CHUNK]))
            for reply in got:
                if reply.has_error():
                    raise ClientFailure(f"client {reply.metadata.src_node_id} failed: {reply.error.reason}")
                on_reply(reply)
                done.add(reply.metadata.reply_to_message_id)
            answered += len(got)
        pending = [mid for mid in pending if mid not in done]
        if pending and not done:
            time.sleep(0.02)
    if answered < len(messages):
        raise ClientFailure(f"only {answered} of {len(messages)} clients answered")


def _messages(plan: RoundPlan, nodes: list[int], rnd: int, message_type: str) -> list[Message]:
    """One content for every client (as Flower's strategies do): the model is serialised once a round."""
    content = RecordDict({ARRAYS: ArrayRecord({k: v.contiguous() for k, v in plan.tensors.items()}),
                          CONFIG: ConfigRecord(dict(plan.config))})
    return [Message(content=content, dst_node_id=node, message_type=message_type, group_id=str(rnd)) for node in nodes]


def _examples(reply: Message) -> int:
    return int(reply.content[METRICS][NUM_EXAMPLES])


def _evaluate(grid: Grid, strategy: RoundStrategy, nodes: list[int], rnd: int) -> tuple[float, float]:
    plan = strategy.configure_evaluate(rnd)
    if plan is None:
        return strategy.evaluate_global()
    results: list[tuple[dict, int]] = []
    _gather(grid, _messages(plan, nodes, rnd, "evaluate"), lambda r: results.append((dict(r.content[METRICS]), _examples(r))))
    return mean_eval(results)


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
            mean, losses, compute = RunningMean(), [], []

            def fold(reply: Message) -> None:
                metrics, examples = reply.content[METRICS], _examples(reply)
                mean.add(reply.content, examples)
                losses.append((float(metrics[TRAIN_LOSS]), examples))
                compute.append(float(metrics[COMPUTE_S]))

            _gather(grid, _messages(plan, sampled, rnd, "train"), fold)
            strategy.aggregate_train(RoundUpdate(rnd, mean.mean() if mean.total else {}, mean.total, tuple(sampled),
                                                 fed.protocol))
            eval_start = time.perf_counter()
            eval_loss, eval_acc = _evaluate(grid, strategy, nodes, rnd) if evaluated_in(config, rnd) else (None, None)
            eval_s = elapsed(eval_start)
            log.record(RoundStats(
                round=rnd,
                clients=len(losses),
                train_loss=mean_train_loss(losses),
                eval_loss=eval_loss,
                eval_acc=eval_acc,
                wall_s=elapsed(start),
                client_compute_s=sum(compute),
                eval_s=eval_s,
            ))
            progress.update(bar, advance=1, description=f"acc {eval_acc:.2%}" if eval_acc is not None else "")
    return log.finish(strategy.global_state())
