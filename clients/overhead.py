"""What a defense costs a client, measured as a ratio in one process, side by side with no defense.

Wall clocks of separate training runs measure whatever else the machine was doing while each ran.
Here the same client round (the real :meth:`ClientRuntime.train_content`: batches, encoder, gradient
step, update transforms, vetting, metrics) runs with and without the defenses, on the same model,
batches and local steps, alternating after a warm-up (plain, defended, then defended, plain, ...,
so a slow drift of the machine's load falls on both alike), on one torch thread as each client of
the Ray engine runs. Each pair gives a ratio of the process's CPU seconds (which other processes on
the machine disturb far less than wall seconds; the wall ratio is kept beside it); the median over
the pairs is the overhead. SecAgg+'s client-side work (key agreement, masking) runs in the
SecAgg+ workflow and is not part of this measurement.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from flwr.app import Context, RecordDict

from clients.runtime import ClientRuntime
from fl_sim.config import RunConfig
from fl_sim.wire import METRICS, NUM_EXAMPLES


@dataclass(frozen=True)
class Overhead:
    ratio: float  # median over pairs of defended / plain CPU seconds per client round
    defended_s: float  # median CPU seconds per defended round
    plain_s: float  # median CPU seconds per plain round
    wall_ratio: float  # the same from wall clocks (what a loaded machine disturbs most)
    pairs: int
    examples_defended: int  # examples behind one defended update (an inter-InstaHide mix counts more)
    examples_plain: int
    spread: float  # (75th - 25th percentile) of the pair ratios: how far to trust ``ratio``

    def as_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


def _context(partition: int, num_partitions: int) -> Context:
    return Context(run_id=0, node_id=partition + 1, node_config={"partition-id": partition, "num-partitions": num_partitions},
                   state=RecordDict(), run_config={})


def _round(runtime: ClientRuntime, context: Context, rnd: int) -> tuple[float, float, int]:
    """CPU seconds, wall seconds and examples of one client round."""
    received = {k: v.clone() for k, v in runtime.initial.items() if k in set(runtime.task.shared_keys(runtime.model))}
    cpu, wall = time.process_time(), time.perf_counter()
    content = runtime.train_content(received, rnd, context, instruction_id=f"overhead-{rnd}")
    return time.process_time() - cpu, time.perf_counter() - wall, int(content[METRICS][NUM_EXAMPLES])


def measure_overhead(config: RunConfig, *, pairs: int = 7, warmup: int = 2, partition: int = 0,
                     threads: int = 1) -> Overhead:
    """The defenses of ``config`` (those partition ``partition`` applies) against none, per client round,
    on ``threads`` torch threads (1: as each client of the Ray engine runs)."""
    if not config.defenses:
        raise ValueError("defenses: nothing to measure; the config has no defense")
    plain = ClientRuntime(config.updated(defenses=[], tap={"enabled": False, "ground_truth": False}), None)
    defended = ClientRuntime(config.updated(tap={"enabled": False, "ground_truth": False}), None)
    n = config.federation.num_clients
    contexts = {id(plain): _context(partition, n), id(defended): _context(partition, n)}
    cpu: dict[int, list[float]] = {id(plain): [], id(defended): []}
    wall: dict[int, list[float]] = {id(plain): [], id(defended): []}
    examples: dict[int, int] = {}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for i in range(warmup + pairs):
            order = (plain, defended) if i % 2 == 0 else (defended, plain)
            for runtime in order:
                cpu_s, wall_s, count = _round(runtime, contexts[id(runtime)], rnd=1)  # the same round: the same batches
                examples[id(runtime)] = count
                if i >= warmup:
                    cpu[id(runtime)].append(cpu_s)
                    wall[id(runtime)].append(wall_s)
    finally:
        torch.set_num_threads(before)
    ratios = [d / p for d, p in zip(cpu[id(defended)], cpu[id(plain)])]
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
    return Overhead(
        ratio=statistics.median(ratios),
        defended_s=statistics.median(cpu[id(defended)]),
        plain_s=statistics.median(cpu[id(plain)]),
        wall_ratio=statistics.median(d / p for d, p in zip(wall[id(defended)], wall[id(plain)])),
        pairs=pairs,
        examples_defended=examples[id(defended)],
        examples_plain=examples[id(plain)],
        spread=quartiles[2] - quartiles[0],
    )
