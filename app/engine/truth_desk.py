"""The ground-truth desk: under Ray, only the driver's node writes the run directory.

Clients may run on any node of a cluster, where the run directory may not exist (it is
driver-local) or may sit on a network file system, where SQLite's locks and its WAL do not
hold across machines. So a client hands each private batch to one actor on the driver's
node, which writes it into the sidecar; the client waits for the commit before it replies,
so a reply never exists without its ground truth.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from fl_sim.ground_truth import PrivateBatch, write_record

DESK_NAME = "fl-sim-ground-truth"


@ray.remote(num_cpus=0)
class GroundTruthDesk:
    """Writes the records; the run holds the sidecar open on this node for as long as it runs
    (:func:`fl_sim.ground_truth.ground_truth_held_open`), so a record's write does not checkpoint the WAL."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = Path(run_dir)

    def record(self, record: PrivateBatch) -> None:
        write_record(self.run_dir, record)


@dataclass
class DriverSink:
    """A client's :class:`~fl_sim.ground_truth.GroundTruthSink` under Ray: the record goes to the desk on the
    driver's node. Picklable (Flower ships the ClientApp to its actors); the desk's handle is looked up
    once per process."""

    run_dir: str
    _desk: Any = field(default=None, init=False, repr=False, compare=False)

    @property
    def key(self) -> str:
        return f"ray:{self.run_dir}"

    def __getstate__(self) -> dict[str, Any]:
        return {"run_dir": self.run_dir}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.run_dir, self._desk = state["run_dir"], None

    def __call__(self, record: PrivateBatch) -> None:
        if self._desk is None:
            self._desk = ray.get_actor(DESK_NAME)
        ray.get(self._desk.record.remote(record))


@contextlib.contextmanager
def serving(sink: DriverSink) -> Iterator[None]:
    """The desk for ``sink``'s run, on this (the driver's) node, while the simulation runs. Every record is
    committed before its client replies, so when Flower shuts Ray down at the end (the desk with it) there
    is nothing left to write; a Ray that is still up (a joined cluster) has the desk killed here."""
    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    desk = GroundTruthDesk.options(name=DESK_NAME, scheduling_strategy=here).remote(sink.run_dir)
    session = ray.get_runtime_context().get_job_id()
    try:
        yield
    finally:
        if ray.is_initialized() and ray.get_runtime_context().get_job_id() == session:
            ray.kill(desk)
