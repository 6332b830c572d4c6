"""The ground-truth sidecar: the private data behind each client reply.

FOR EVALUATION ONLY. It lives apart from the traffic log (``ground_truth/``),
handed over by the clients through a :class:`GroundTruthSink` (written in place where
the client runs on the driver's machine, sent to the driver's node under Ray), so
that only the driver's node writes the run directory, and the attacker-side API
(:class:`adversary.traffic_log.TrafficLog`) never touches it. Entries are keyed
by the id of the server instruction a client answered, which is the reply's
``reply_to`` in the traffic log.

Per reply it stores, for every local step: the images, labels, dataset indices,
and the BatchNorm batch statistics of that step's forward pass; plus the
node-id to partition-id mapping that only the simulation knows.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from safetensors.numpy import load_file, save_file

from fl_sim.safe_paths import file_inside, is_plain_name
from fl_sim.sqlite_util import open_shared
from fl_sim.validation import exception_line

GROUND_TRUTH_DIR = "ground_truth"
_DB = "index.sqlite"
BATCH_FILE = re.compile(r"batches/[A-Za-z0-9][A-Za-z0-9._-]{0,199}\.safetensors")  # batches/<instruction id>.safetensors


class GroundTruthError(ValueError):
    """A damaged sidecar (an index row or a batch file its writer did not write); one line."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (node_id TEXT PRIMARY KEY, partition_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    instruction_id TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    partition_id INTEGER NOT NULL,
    round INTEGER,
    num_steps INTEGER NOT NULL,
    extra TEXT NOT NULL,
    file TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""


def _connect(path: Path) -> sqlite3.Connection:
    return open_shared(path, _SCHEMA)


def init_ground_truth(run_dir: str | Path) -> None:
    """Create the sidecar's index before any client writes to it (no creation race)."""
    root = Path(run_dir) / GROUND_TRUTH_DIR
    (root / "batches").mkdir(parents=True, exist_ok=True)
    _connect(root / _DB).close()


@contextlib.contextmanager
def ground_truth_held_open(run_dir: str | Path) -> Iterator[None]:
    """Create the sidecar and hold one connection to it for the run: SQLite checkpoints and syncs the
    WAL whenever its last connection closes, which each client's write would otherwise be (measured:
    most of a 3 ms write). The last close, at the end, leaves the index whole and alone."""
    init_ground_truth(run_dir)
    conn = _connect(Path(run_dir) / GROUND_TRUTH_DIR / _DB)
    try:
        yield
    finally:
        conn.close()


def record_private_batch(
    run_dir: str | Path,
    *,
    instruction_id: str,
    node_id: int,
    partition_id: int,
    round: int | None,
    steps: list[dict[str, np.ndarray]],
    extra: dict[str, Any] | None = None,
) -> None:
    """Store one reply's private data; called by the client that produced it.

    Many client processes write concurrently: SQLite's lock serialises the index,
    and each reply has its own tensor file, written before its index row.
    """
    if not is_plain_name(instruction_id):
        raise ValueError(f"ground truth: instruction id {instruction_id!r} is not a plain name; nothing written")
    root = Path(run_dir) / GROUND_TRUTH_DIR
    (root / "batches").mkdir(parents=True, exist_ok=True)
    rel = f"batches/{instruction_id}.safetensors"
    flat = {f"step{i}/{k}": np.ascontiguousarray(v) for i, step in enumerate(steps) for k, v in step.items()}
    tmp = root / (rel + f".{os.getpid()}.tmp")
    save_file(flat, str(tmp))
    os.replace(tmp, root / rel)
    conn = _connect(root / _DB)
    try:
        with conn:
            conn.execute("INSERT OR REPLACE INTO nodes VALUES (?, ?)", (str(node_id), partition_id))
            conn.execute(
                "INSERT OR REPLACE INTO batches VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (instruction_id, str(node_id), partition_id, round, len(steps), json.dumps(extra or {}), rel, time.time()),
            )
    finally:
        conn.close()


@dataclass(frozen=True)
class PrivateBatch:
    """One reply's private data: what its client hands over (to be written by the driver's node) and what
    the evaluator reads back."""

    instruction_id: str
    node_id: int
    partition_id: int
    round: int | None
    steps: list[dict[str, np.ndarray]]
    extra: dict[str, Any]


class GroundTruthSink(Protocol):
    """Where clients hand their private batches; returns once the record is committed, so a reply never
    exists without its ground truth. ``key`` names the destination (a client process keeps one runtime per run)."""

    key: str

    def __call__(self, record: PrivateBatch) -> None: ...


@dataclass(frozen=True)
class SidecarWriter:
    """The sink of a client that runs on the driver's machine: the record goes straight into the sidecar."""

    run_dir: Path

    @property
    def key(self) -> str:
        return str(self.run_dir)

    def __call__(self, record: PrivateBatch) -> None:
        write_record(self.run_dir, record)


def write_record(run_dir: str | Path, record: PrivateBatch) -> None:
    record_private_batch(run_dir, instruction_id=record.instruction_id, node_id=record.node_id,
                         partition_id=record.partition_id, round=record.round, steps=record.steps, extra=record.extra)


class GroundTruth:
    """Evaluation-side reader. Never hand this to an attack."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def open(cls, run_dir: str | Path) -> GroundTruth:
        root = Path(run_dir) / GROUND_TRUTH_DIR
        if not (root / _DB).is_file():
            raise FileNotFoundError(f"RUN_DIR: no ground-truth sidecar at {root}")
        return cls(root)

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        try:
            conn = sqlite3.connect(f"{(self.root / _DB).resolve().as_uri()}?mode=ro", uri=True, timeout=30.0)
            try:
                return conn.execute(sql, args).fetchall()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise GroundTruthError(f"RUN_DIR: corrupted ground-truth sidecar ({_DB}: {exc})") from None

    def partition_of(self, node_id: int) -> int | None:
        rows = self._query("SELECT partition_id FROM nodes WHERE node_id = ?", (str(node_id),))
        return rows[0][0] if rows else None

    def node_partitions(self) -> dict[int, int]:
        return {int(n): p for n, p in self._query("SELECT node_id, partition_id FROM nodes")}

    def batch_for(self, instruction_id: str) -> PrivateBatch | None:
        """The private data behind the reply to ``instruction_id`` (a log entry's ``reply_to``)."""
        rows = self._query("SELECT * FROM batches WHERE instruction_id = ?", (instruction_id,))
        if not rows:
            return None
        iid, node, part, rnd, num_steps, extra, rel, _created = rows[0]
        path = file_inside(self.root, rel, BATCH_FILE)
        if path is None:
            raise GroundTruthError(f"RUN_DIR: corrupted ground-truth sidecar (the batch of {instruction_id} is {rel!r}: "
                                   "missing, a link, or not of the form batches/ID.safetensors)")
        try:
            flat = load_file(str(path))
            steps: list[dict[str, np.ndarray]] = [{} for _ in range(int(num_steps))]
            for key, value in flat.items():
                head, _, name = key.partition("/")
                steps[int(head.removeprefix("step"))][name] = value
            return PrivateBatch(iid, int(node), int(part), rnd, steps, json.loads(extra))
        except Exception as exc:  # safetensors, int() and json report damage as several error types
            raise GroundTruthError(f"RUN_DIR: corrupted ground-truth sidecar ({rel}: {exception_line(exc)})") from None

    def batch_for_round(self, round: int, node_id: int) -> PrivateBatch | None:
        """The private data a node trained on in a round (one training reply per node and round)."""
        rows = self._query(
            "SELECT instruction_id FROM batches WHERE round = ? AND node_id = ? ORDER BY created_at DESC",
            (round, str(node_id)),
        )
        return self.batch_for(rows[0][0]) if rows else None

    def images_of(self, nodes: tuple[int, ...], key: str = "images", limit: int = 32) -> list[np.ndarray]:
        """Up to ``limit`` distinct images (``key``: ``images`` or ``encoded``) the given nodes trained on,
        oldest first: real images of the same data, for calibrating verdicts."""
        marks = ",".join("?" * len(nodes))
        rows = self._query(f"SELECT instruction_id FROM batches WHERE node_id IN ({marks}) ORDER BY created_at",
                           tuple(str(n) for n in nodes))
        seen: set[bytes] = set()
        out: list[np.ndarray] = []
        for (iid,) in rows:
            batch = self.batch_for(iid)
            for step in batch.steps if batch is not None else []:
                for image in step.get(key, ()):
                    digest = np.ascontiguousarray(image).tobytes()
                    if digest not in seen:
                        seen.add(digest)
                        out.append(image)
                        if len(out) >= limit:
                            return out
        return out

    def __len__(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM batches")[0][0])
