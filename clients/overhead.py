"""What a defense costs a client, measured as a ratio in one process, side by side with no defense.

Wall clocks of separate training runs measure whatever else the machine was doing while each ran.
Here the same client round (the real :meth:`ClientRuntime.train_content`: batches, encoder, gradient
step, update transforms, vetting, metrics) runs with and without the defenses, on the same model,
batches and local steps, alternating after a warm-up (plain, defended, then defended, plain, ...,
so a slow drift of the machine's load falls on both alike), on one torch thread as each client of
the Ray engine runs. Each pair gives a ratio of the process's CPU seconds (which other processes on
the machine disturb far less than wall seconds; the wall ratio is kept beside it); the median over
the pairs is the overhead.

Under ``federation.secagg`` the defended round is the client's whole SecAgg+ round through the
legacy ClientApp and Flower's ``secaggplus_mod``: key generation, secret sharing and encryption of
the shares, training, quantization and masks, the unmask reply (the neighbours emulated off the
clock, :mod:`clients.secagg_peers`); the plain one is the same legacy app without the protocol
and without the defenses, so both carry the same legacy conversions.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from flwr.app import Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import FitIns, ndarrays_to_parameters
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.task_identity import TaskIdentity

from clients.runtime import ClientRuntime
from clients.secagg import legacy_client_app
from clients.secagg_peers import run_client_round
from fl_sim.config import RunConfig
from fl_sim.wire import METRICS, NUM_EXAMPLES, SERVER_ROUND


@dataclass(frozen=True)
class Overhead:
    ratio: float  # median over pairs of defended / plain CPU seconds per client round
    defended_s: float  # median CPU seconds per defended round
    plain_s: float  # median CPU seconds per plain round
    wall_ratio: float  # the same from wall clocks (what a loaded machine disturbs most)
    pairs: int
    examples_defended: int  # examples behind one defended update (an inter-InstaHide mix counts more)
    examples_plain: int
    q1: float  # the pair ratios' 25th percentile ...
    q3: float  # ... and 75th: how far to trust ``ratio`` (a ratio below 1 with q3 >= 1 is noise, not a saving)

    def as_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


def _context(partition: int, num_partitions: int) -> Context:
    return Context(run_id=0, node_id=partition + 1, node_config={"partition-id": partition, "num-partitions": num_partitions},
                   state=RecordDict(), run_config={})


Round = Callable[[], tuple[float, float, int]]  # one client round: CPU seconds, wall seconds, examples


def _received(runtime: ClientRuntime) -> dict[str, torch.Tensor]:
    """The global tensors of the round (the initial model's shared ones, the same every time)."""
    shared = runtime.task.shared_keys(runtime.model)
    return {k: runtime.initial[k].clone() for k in shared}


def _train_round(runtime: ClientRuntime, context: Context, rnd: int = 1) -> Round:
    def run() -> tuple[float, float, int]:
        received = _received(runtime)
        cpu, wall = time.process_time(), time.perf_counter()
        content = runtime.train_content(received, rnd, context, instruction_id=f"overhead-{rnd}")
        return time.process_time() - cpu, time.perf_counter() - wall, int(content[METRICS][NUM_EXAMPLES])
    return run


def _fit_content(runtime: ClientRuntime, rnd: int) -> RecordDict:
    """The legacy fit instruction the server would send: the shared tensors in wire order."""
    arrays = [t.numpy() for t in _received(runtime).values()]
    return compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters(arrays), {SERVER_ROUND: rnd}), keep_input=True)


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def _flower_quiet() -> Iterator[None]:
    """The protocol's per-stage debug lines, a dozen per round, would bury the figures."""
    logger = logging.getLogger("flwr")
    before = logger.level
    logger.setLevel(max(before, logging.INFO))
    try:
        yield
    finally:
        logger.setLevel(before)


@contextmanager
def _as_the_server() -> Iterator[None]:
    """Flower stamps each new Message with the sender's identity: here this process sends the instructions."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 0, SUPERLINK_NODE_ID
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


class _Clock:
    """Runs the client app on its messages and adds up only the app's own CPU and wall seconds."""

    def __init__(self, runtime: ClientRuntime, context: Context, *, secure: bool) -> None:
        self.app = legacy_client_app(lambda: runtime, secure=secure)
        self.context = context
        self.cpu = self.wall = 0.0

    def __call__(self, message: Message) -> Message:
        cpu, wall = time.process_time(), time.perf_counter()
        reply = self.app(message, self.context)
        self.cpu += time.process_time() - cpu
        self.wall += time.perf_counter() - wall
        return reply


def _legacy_round(runtime: ClientRuntime, context: Context, *, secure: bool, rnd: int = 1) -> Round:
    def run() -> tuple[float, float, int]:
        clock = _Clock(runtime, context, secure=secure)
        fit = _fit_content(runtime, rnd)
        if secure:
            reply = run_client_round(clock, context.node_id, fit, runtime.config, rnd).masked
        else:
            reply = clock(Message(content=fit, dst_node_id=context.node_id, message_type=MessageType.TRAIN, group_id=str(rnd)))
            if reply.has_error():
                raise RuntimeError(f"the plain legacy client failed: {reply.error.reason}")
        return clock.cpu, clock.wall, int(compat.recorddict_to_fitres(reply.content, keep_input=True).num_examples)
    return run


def _rounds(config: RunConfig, partition: int) -> tuple[Round, Round]:
    """(plain, defended) client rounds of ``config``: training alone, or the legacy app under SecAgg+."""
    quiet = {"tap": {"enabled": False, "ground_truth": False}}
    plain = ClientRuntime(config.updated(defenses=[], **quiet), None)
    defended = ClientRuntime(config.updated(**quiet), None)
    n = config.federation.num_clients
    if config.federation.secagg:
        return (_legacy_round(plain, _context(partition, n), secure=False),
                _legacy_round(defended, _context(partition, n), secure=True))
    return _train_round(plain, _context(partition, n)), _train_round(defended, _context(partition, n))


def measure_overhead(config: RunConfig, *, pairs: int = 7, warmup: int = 2, partition: int = 0,
                     threads: int = 1) -> Overhead:
    """The defenses of ``config`` (those partition ``partition`` applies) and its SecAgg+, if any, against
    neither, per client round, on ``threads`` torch threads (1: as each client of the Ray engine runs)."""
    if not config.defenses and not config.federation.secagg:
        raise ValueError("defenses: nothing to measure; the config has neither a defense nor federation.secagg")
    plain, defended = _rounds(config, partition)
    cpu: dict[str, list[float]] = {"plain": [], "defended": []}
    wall: dict[str, list[float]] = {"plain": [], "defended": []}
    examples: dict[str, int] = {}
    with _torch_threads(threads), _as_the_server(), _flower_quiet():
        for i in range(warmup + pairs):
            order = (("plain", plain), ("defended", defended))
            for arm, run in order if i % 2 == 0 else order[::-1]:
                cpu_s, wall_s, examples[arm] = run()  # the same round each time: the same batches
                if i >= warmup:
                    cpu[arm].append(cpu_s)
                    wall[arm].append(wall_s)
    ratios = [d / p for d, p in zip(cpu["defended"], cpu["plain"])]
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
    return Overhead(
        ratio=statistics.median(ratios),
        defended_s=statistics.median(cpu["defended"]),
        plain_s=statistics.median(cpu["plain"]),
        wall_ratio=statistics.median(d / p for d, p in zip(wall["defended"], wall["plain"])),
        pairs=pairs,
        examples_defended=examples["defended"],
        examples_plain=examples["plain"],
        q1=quartiles[0],
        q3=quartiles[2],
    )
