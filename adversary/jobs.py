"""The adversary's job book: every scheduled attack, its state and where its outputs went.

Lives in ``RUN_DIR/adversary/jobs.sqlite`` (WAL). Jobs still ``pending`` or
``running`` when the simulation (and Ray) shut down stay in the book and are
picked up by ``fl-sim attack --resume RUN_DIR``. A process runs a job only after
claiming it in one statement (pending, or running for a process that is gone), so
two resumers, or a resumer and a restarted worker, never run the same job twice.
A job's outputs are read back as ``RUN_DIR/attacks/NAME`` from the plain folder
name the book records, never from a path written in it (a shared book may have
been edited).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adversary.outputs import ATTACKS_DIR
from adversary.roles.base import AttackTarget
from fl_sim import processes
from fl_sim.safe_paths import is_plain_name
from fl_sim.sqlite_util import open_shared

JOBS_DB = "adversary/jobs.sqlite"
STATES = ("pending", "running", "done", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    key TEXT UNIQUE NOT NULL,
    role TEXT NOT NULL,
    target TEXT NOT NULL,
    preset TEXT NOT NULL,
    overrides TEXT NOT NULL,
    threat TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    out_dir TEXT,
    metrics TEXT,
    error TEXT,
    created_at REAL NOT NULL,
    finished_at REAL,
    claimed_by TEXT
);
CREATE TABLE IF NOT EXISTS faults (
    id INTEGER PRIMARY KEY,
    role TEXT NOT NULL,
    stage TEXT NOT NULL,
    error TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS notes (
    topic TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    text TEXT NOT NULL,
    at REAL NOT NULL
);
"""


def _key(role: str, target: AttackTarget, preset: str, variant: str) -> str:
    return f"{role}:{preset}:{target.key()}" + (f":{variant}" if variant else "")


@dataclass(frozen=True)
class Job:
    id: int
    role: str
    target: AttackTarget
    preset: str
    overrides: dict[str, Any]
    threat: dict[str, Any]
    state: str
    attempts: int
    out_dir: str | None
    metrics: dict[str, Any] | None
    error: str | None


class JobBook:
    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        path = Path(run_dir) / JOBS_DB
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = open_shared(path, _SCHEMA)
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(jobs)")}
        if "claimed_by" not in columns:  # a book from before claims
            try:
                with self._conn:
                    self._conn.execute("ALTER TABLE jobs ADD COLUMN claimed_by TEXT")
            except sqlite3.OperationalError as exc:  # another process added it first
                if "duplicate column" not in str(exc):
                    raise
        self._lock = threading.Lock()

    @staticmethod
    def exists(run_dir: str | Path) -> bool:
        return (Path(run_dir) / JOBS_DB).is_file()

    def add(self, role: str, target: AttackTarget, preset: str, overrides: dict[str, Any], threat: dict[str, Any],
            *, variant: str = "") -> int | None:
        """Schedule once per target (a re-delivered message does not schedule twice); ``variant`` tells
        apart requests for the same target that differ otherwise (a command line's --set)."""
        payload = target.to_json()
        with self._lock, self._conn:
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO jobs (key, role, target, preset, overrides, threat, state, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
                (_key(role, target, preset, variant), role, json.dumps(payload), preset, json.dumps(overrides),
                 json.dumps(threat), time.time()),
            )
            return int(cur.lastrowid) if cur.rowcount else None  # (OR IGNORE: a NULL column is ignored too)

    def find(self, role: str, target: AttackTarget, preset: str, *, variant: str = "") -> int | None:
        """The id of the job :meth:`add` schedules for these (None if there is none yet)."""
        with self._lock:
            row = self._conn.execute("SELECT id FROM jobs WHERE key = ?", (_key(role, target, preset, variant),)).fetchone()
        return int(row[0]) if row else None

    def retry(self, job_id: int) -> None:
        """A failed job back to pending: a command line asking for it again tries again."""
        with self._lock, self._conn:
            self._conn.execute("UPDATE jobs SET state = 'pending', error = NULL WHERE id = ? AND state = 'failed'", (job_id,))

    def claim(self, job_id: int) -> bool:
        """Mark the job running for this process if it is pending, or running for a process that no
        longer runs (a killed run, a crashed worker); False if it is done, failed or someone else's."""
        me = processes.token()
        with self._lock, self._conn:
            row = self._conn.execute("SELECT state, claimed_by FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row[0] not in ("pending", "running"):
                return False
            state, holder = row
            if state == "running" and holder and processes.is_alive(holder):
                return False
            cur = self._conn.execute(  # the same state and holder as read: a rival claim in between wins
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, claimed_by = ? WHERE id = ? AND state = ?"
                " AND claimed_by IS ?", (me, job_id, state, holder))
            return cur.rowcount == 1

    def discard(self, job_id: int) -> None:
        """Forget a job that never started (its request was refused before any work)."""
        with self._lock, self._conn:
            self._conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def mark(self, job_id: int, state: str, *, out_dir: str | None = None, metrics: dict[str, Any] | None = None,
             error: str | None = None) -> None:
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}")
        with self._lock, self._conn:
            self._conn.execute(
                "UPDATE jobs SET state = ?, attempts = attempts + (? = 'running'), out_dir = COALESCE(?, out_dir),"
                " metrics = COALESCE(?, metrics), error = ?, finished_at = CASE WHEN ? IN ('done', 'failed') THEN ? END"
                " WHERE id = ?",
                (state, state, out_dir, json.dumps(metrics, default=str) if metrics is not None else None, error, state,
                 time.time(), job_id),
            )

    def jobs(self, states: tuple[str, ...] = STATES) -> list[Job]:
        marks = ",".join("?" * len(states))
        with self._lock:
            rows = self._conn.execute(
                f"SELECT id, role, target, preset, overrides, threat, state, attempts, out_dir, metrics, error FROM jobs"
                f" WHERE state IN ({marks}) ORDER BY id", states
            ).fetchall()
        out = []
        for jid, role, target, preset, overrides, threat, state, attempts, out_dir, metrics, error in rows:
            out.append(Job(jid, role, AttackTarget.from_json(json.loads(target)), preset, json.loads(overrides), json.loads(threat), state, attempts,
                           self._outputs(out_dir), json.loads(metrics) if metrics else None, error))
        return out

    def _outputs(self, recorded: object) -> str | None:
        """``RUN_DIR/attacks/NAME`` for the folder name the book records (None if it is not a plain name)."""
        name = Path(recorded).name if isinstance(recorded, str) else None
        return str(self.run_dir / ATTACKS_DIR / name) if is_plain_name(name) else None

    def record_fault(self, role: str, stage: str, error: str) -> None:
        """A role that failed (``stage``: built, observe, observe_aggregate): the run goes on without it."""
        with self._lock, self._conn:
            self._conn.execute("INSERT INTO faults (role, stage, error, at) VALUES (?, ?, ?, ?)", (role, stage, error, time.time()))

    def faults(self) -> list[tuple[str, str, str]]:
        """(role, stage, error) of each failure, oldest first."""
        with self._lock:
            return [(str(r), str(s), str(e)) for r, s, e in
                    self._conn.execute("SELECT role, stage, error FROM faults ORDER BY id").fetchall()]

    def record_note(self, role: str, topic: str, text: str) -> None:
        """What the run should tell about its adversary besides jobs (``topic``: e.g. how the role's
        process is confined); one text a topic, the latest kept."""
        with self._lock, self._conn:
            self._conn.execute("INSERT OR REPLACE INTO notes (topic, role, text, at) VALUES (?, ?, ?, ?)",
                               (topic, role, text, time.time()))

    def notes(self) -> dict[str, str]:
        with self._lock:
            return {str(t): str(x) for t, x in self._conn.execute("SELECT topic, text FROM notes ORDER BY at").fetchall()}

    def close(self) -> None:
        self._conn.close()

    @staticmethod
    def remove_if_empty(run_dir: str | Path) -> None:
        """Delete a book that holds no job and no fault (one a refused command line had just made)."""
        if not JobBook.exists(run_dir):
            return
        book = JobBook(run_dir)
        try:
            with book._lock:
                empty = not book._conn.execute("SELECT 1 FROM jobs UNION ALL SELECT 1 FROM faults LIMIT 1").fetchone()
        finally:
            book.close()
        if empty:
            path = Path(run_dir) / JOBS_DB
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # the adversary folder, if the book was all it held


def messages_named_by_jobs(run_dir: str | Path) -> set[int]:
    """Every traffic-log message an attack job in the book reads as its target (the tap keeps them)."""
    if not JobBook.exists(run_dir):
        return set()
    book = JobBook(run_dir)
    try:
        return {m for job in book.jobs() for m in job.target.messages}
    finally:
        book.close()
