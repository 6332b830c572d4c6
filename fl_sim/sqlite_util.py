"""Opening an SQLite index that several processes share (clients, attack workers).

Switching a new database to WAL mode takes an exclusive lock that SQLite's busy
timeout does not always wait for: two processes creating the same file at once
can get "database is locked". Opening retries that for a while instead.
"""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path


def open_shared(path: Path, schema: str, *, timeout: float = 60.0, attempts: int = 200) -> sqlite3.Connection:
    """Connect, make sure WAL mode and the schema are in place, retrying on lock contention."""
    for attempt in range(attempts):
        conn = sqlite3.connect(path, timeout=timeout, check_same_thread=False)
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(schema)
            conn.commit()
            return conn
        except sqlite3.OperationalError as exc:
            conn.close()
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.05 + random.random() * 0.2)
    raise AssertionError("unreachable")
