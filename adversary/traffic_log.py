"""The traffic log: every intercepted message, as the adversary saw it.

Layout inside a run directory::

    traffic/index.sqlite          one row per message, per tensor and per stored blob (WAL mode)
    traffic/blobs/pack-000001.bin each distinct tensor's bytes once, by SHA-256 (adversary.tensor_store)
    traffic/tensors/000042.safetensors   logs of the first format: one file a message (still read)

The writer (adversary.traffic_writer) commits a message's index rows only after the bytes they
name are in place, so a process killed at any instant leaves a log in which every committed
message is complete. Tensors are stored as raw bytes or safetensors, never pickle.

A log may come from someone else: the reader follows no path the index names beyond a plain
``blobs/pack-NNNNNN.bin`` or ``tensors/NNNNNNN.safetensors`` (no ``..``, no absolute path, no
link), checks every blob against its digest, and a damaged index, pack or tensor file is one
"corrupted log" line, never a traceback. A log on a folder it cannot write (a read-only mount)
opens immutable.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from adversary.tensor_store import STORED_KINDS, BlobError, PackReader
from fl_sim.safe_paths import file_inside
from fl_sim.validation import exception_line

TRAFFIC_DIR = "traffic"
INDEX_DB = "index.sqlite"
TENSOR_DIR = "tensors"
DIRECTIONS = ("down", "up")
TENSOR_FILE = re.compile(r"tensors/[0-9]{7,12}\.safetensors")  # what the first format's writer named, and all a reader follows
SCHEMA_VERSION = 2  # 1: a safetensors file a message; 2: content-addressed blobs

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    round INTEGER,
    direction TEXT NOT NULL CHECK (direction IN ('down', 'up')),
    src_node TEXT NOT NULL,
    dst_node TEXT NOT NULL,
    message_type TEXT NOT NULL,
    flower_id TEXT,
    reply_to TEXT,
    group_id TEXT,
    num_bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    created_at REAL,
    logged_at REAL NOT NULL,
    metrics TEXT NOT NULL,
    config TEXT NOT NULL,
    error TEXT,
    tensor_file TEXT,
    kept INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS tensors (
    message INTEGER NOT NULL REFERENCES messages(id),
    name TEXT NOT NULL,
    shape TEXT NOT NULL,
    dtype TEXT NOT NULL,
    l2 REAL NOT NULL,
    blob TEXT,
    PRIMARY KEY (message, name)
);
CREATE TABLE IF NOT EXISTS blobs (
    digest TEXT PRIMARY KEY,
    pack TEXT NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_round ON messages(round);
"""


_MESSAGE_COLUMNS = ("id, round, direction, src_node, dst_node, message_type, flower_id, reply_to, group_id, num_bytes,"
                    " sha256, created_at, logged_at, metrics, config, error")


class _SpoolGone(Exception):
    def __init__(self, pack: str) -> None:
        self.pack = pack


class TrafficLogError(ValueError):
    """A user-facing problem with a traffic log (missing, unknown message id)."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str
    l2: float


@dataclass(frozen=True, kw_only=True)
class MessageMeta:
    """What the log keeps of every message besides its tensors."""

    round: int | None
    direction: str
    src_node: int
    dst_node: int
    message_type: str
    flower_id: str | None
    reply_to: str | None
    group_id: str | None = None
    num_bytes: int
    sha256: str
    created_at: float | None
    metrics: Mapping[str, Any]
    config: Mapping[str, Any]
    error: str | None = None

    @property
    def client_node(self) -> int:
        """The client end of the link, whichever way the message went."""
        return self.dst_node if self.direction == "down" else self.src_node


@dataclass(frozen=True, kw_only=True)
class OutgoingRecord(MessageMeta):
    """What the tap hands the writer for one message: tensors as numpy arrays or the tap's payloads
    (adversary.payload). An empty ``sha256`` is the writer's to compute, from the tensors' digests and
    ``record_digests`` (each non-tensor record's own digest)."""

    tensors: Mapping[str, Any]
    record_digests: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, kw_only=True)
class MessageInfo(MessageMeta):
    """One intercepted message's index entry (what the attacker sees, no ground truth)."""

    id: int
    logged_at: float
    tensors: tuple[TensorInfo, ...] = field(default=())
    kept: bool = True  # False: the tap policy kept this message's metadata only


def message_to_json(info: MessageInfo) -> dict[str, Any]:
    """A message's index entry as plain data (what the adversary's role process is handed)."""
    data = {k: getattr(info, k) for k in MessageInfo.__dataclass_fields__ if k != "tensors"}
    data["metrics"], data["config"] = dict(info.metrics), dict(info.config)
    data["tensors"] = [[t.name, list(t.shape), t.dtype, t.l2] for t in info.tensors]
    return data


def message_from_json(data: dict[str, Any]) -> MessageInfo:
    fields = {k: v for k, v in data.items() if k in MessageInfo.__dataclass_fields__ and k != "tensors"}
    tensors = tuple(TensorInfo(str(n), tuple(int(d) for d in shape), str(dtype), float(l2)) for n, shape, dtype, l2 in data["tensors"])
    return MessageInfo(**fields, tensors=tensors)


def connect_index(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30.0, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def create_schema(conn: sqlite3.Connection) -> None:
    """The current schema; a log of the first format gains the blob column and keeps its messages."""
    conn.executescript(_SCHEMA)
    if "blob" not in {row[1] for row in conn.execute("PRAGMA table_info(tensors)")}:
        conn.execute("ALTER TABLE tensors ADD COLUMN blob TEXT")
    if "kept" not in {row[1] for row in conn.execute("PRAGMA table_info(messages)")}:
        conn.execute("ALTER TABLE messages ADD COLUMN kept INTEGER NOT NULL DEFAULT 1")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    conn.commit()


class _Checked(sqlite3.Connection):
    """A read-only connection whose damaged database is a TrafficLogError (one line), not a traceback."""

    def execute(self, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        try:
            return super().execute(*args)
        except sqlite3.DatabaseError as exc:
            raise TrafficLogError(f"RUN_DIR: corrupted traffic log ({INDEX_DB}: {exc})") from None


def _read_only(index: Path) -> sqlite3.Connection:
    """``mode=ro``; ``immutable=1`` too where the folder is not writable (SQLite could not make its WAL index)."""
    immutable = "&immutable=1" if not os.access(index.parent, os.W_OK) else ""
    try:
        conn = sqlite3.connect(f"{index.resolve().as_uri()}?mode=ro{immutable}", uri=True, timeout=30.0, factory=_Checked)
    except sqlite3.Error as exc:
        raise TrafficLogError(f"RUN_DIR: cannot open the traffic log {index} ({exc})") from None
    conn.execute("SELECT id, tensor_file FROM messages LIMIT 1")  # schema present, header sane
    conn.execute("SELECT message, name, shape, dtype, l2 FROM tensors LIMIT 1")
    return conn


class TrafficLog:
    """Read-only queries over a run's traffic log."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._conn = _read_only(root / INDEX_DB)
        self._blobs = "blob" in {row[1] for row in self._conn.execute("PRAGMA table_info(tensors)")}
        has_kept = "kept" in {row[1] for row in self._conn.execute("PRAGMA table_info(messages)")}
        self._columns = _MESSAGE_COLUMNS + (", kept" if has_kept else ", 1")
        self._packs = PackReader(root)

    @classmethod
    def open(cls, run_dir: str | Path) -> TrafficLog:
        root = Path(run_dir) / TRAFFIC_DIR
        if not (root / INDEX_DB).is_file():
            raise TrafficLogError(f"RUN_DIR: no traffic log at {root / INDEX_DB}")
        return cls(root)

    def _tensor_path(self, msg_id: int, file: object) -> Path:
        """The message's tensor file, if the index names one the writer would have named; inside ``tensors/``."""
        path = file_inside(self.root, file, TENSOR_FILE)
        if path is None:
            plain = isinstance(file, str) and TENSOR_FILE.fullmatch(file) is not None
            why = "is missing or a link" if plain else "is not of the form tensors/NNNNNNN.safetensors"
            raise TrafficLogError(f"RUN_DIR: corrupted traffic log (message {msg_id}'s tensor file {file!r} {why})")
        return path

    def close(self) -> None:
        self._packs.close()
        self._conn.close()

    def __enter__(self) -> TrafficLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def messages(
        self,
        *,
        round: int | None = None,
        client: int | None = None,
        direction: str | None = None,
        message_type: str | None = None,
    ) -> list[MessageInfo]:
        """Messages in log order, filtered; ``client`` matches either end of the link."""
        if direction is not None and direction not in DIRECTIONS:
            raise TrafficLogError(f"--direction: must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
        where, args = [], []
        if round is not None:
            where.append("round = ?")
            args.append(round)
        if client is not None:
            where.append("(src_node = ? OR dst_node = ?)")
            args += [str(client), str(client)]
        if direction is not None:
            where.append("direction = ?")
            args.append(direction)
        if message_type is not None:
            where.append("message_type = ?")
            args.append(message_type)
        sql = f"SELECT {self._columns} FROM messages" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        rows = self._conn.execute(sql, args).fetchall()
        return [self._info(row) for row in rows]

    def message(self, msg_id: int) -> MessageInfo:
        row = self._conn.execute(f"SELECT {self._columns} FROM messages WHERE id = ?", (msg_id,)).fetchone()
        if row is None:
            last = self._conn.execute("SELECT MAX(id) FROM messages").fetchone()[0]
            raise TrafficLogError(f"MSG_ID: no message {msg_id} in this log (ids run 1..{last or 0})")
        return self._info(row)

    def arrays(self, msg_id: int, prefix: str | None = None) -> dict[str, np.ndarray]:
        """The message's tensors as numpy arrays, names ``record/key``; optional record prefix."""
        info = self.message(msg_id)
        file = self._conn.execute("SELECT tensor_file FROM messages WHERE id = ?", (msg_id,)).fetchone()[0]
        if file is not None:
            arrays = self._file_arrays(info, file)
        elif not info.tensors:
            arrays = {}
        elif self._blobs:
            arrays = self._blob_arrays(info)
        else:
            raise TrafficLogError(f"RUN_DIR: corrupted traffic log (message {msg_id} lists tensors but names no tensor file)")
        if prefix is not None:
            head = prefix.rstrip("/") + "/"
            arrays = {k[len(head):]: v for k, v in arrays.items() if k.startswith(head)}
        return arrays

    def _file_arrays(self, info: MessageInfo, file: object) -> dict[str, np.ndarray]:
        """A message of the first format: one safetensors file."""
        path = self._tensor_path(info.id, file)
        try:
            arrays = load_file(str(path))
        except Exception as exc:  # safetensors reports a damaged file as several error types
            raise TrafficLogError(f"RUN_DIR: corrupted traffic log (message {info.id}'s tensor file {file}: "
                                  f"{exception_line(exc)})") from None
        listed = {t.name: t for t in info.tensors}
        if set(arrays) != set(listed) or any(list(a.shape) != list(listed[k].shape) for k, a in arrays.items()):
            raise TrafficLogError(f"RUN_DIR: corrupted traffic log (message {info.id}'s tensor file {file} does not "
                                  "hold the tensors its index lists)")
        return arrays

    def _blob_arrays(self, info: MessageInfo) -> dict[str, np.ndarray]:
        """A message of the content-addressed format: each tensor from its blob, checked against its digest.

        A spooled blob can move while it is read: the writer moves an attacked message's tensors from its
        round's spool into a pack, commits, then deletes the spool. A spool gone between the index read
        and the file's is read again, once, where the index now says (or found not kept)."""
        try:
            return self._blob_arrays_once(info)
        except _SpoolGone as gone:
            self._packs.forget(gone.pack)
            return self._blob_arrays_once(self.message(info.id))

    def _blob_arrays_once(self, info: MessageInfo) -> dict[str, np.ndarray]:
        msg_id = info.id
        rows = self._conn.execute(
            "SELECT t.name, t.shape, t.dtype, t.blob, b.pack, b.offset, b.length FROM tensors t"
            " LEFT JOIN blobs b ON b.digest = t.blob WHERE t.message = ? ORDER BY t.rowid", (msg_id,)
        ).fetchall()
        arrays: dict[str, np.ndarray] = {}
        read: dict[str, bytearray] = {}
        used: set[str] = set()  # a blob two tensors share is read once; the second gets its own copy
        for name, shape_text, dtype_text, blob, pack, offset, length in rows:
            def corrupted(why: str) -> TrafficLogError:
                return TrafficLogError(f"RUN_DIR: corrupted traffic log (message {msg_id}'s tensor {name!r} {why})")

            try:
                shape = tuple(int(d) for d in json.loads(shape_text))
                dtype = np.dtype(dtype_text)
            except (TypeError, ValueError) as exc:
                raise corrupted(f"has no valid shape or dtype: {exc}") from None
            if dtype.hasobject or dtype.kind not in STORED_KINDS or any(d < 0 for d in shape):
                raise corrupted(f"has dtype {dtype_text!r} or shape {list(shape)}, which the writer never stores")
            if not isinstance(blob, str) or pack is None:
                if not info.kept:
                    raise TrafficLogError(f"MSG_ID: message {msg_id}'s tensors were not kept (the tap's keep_* policy "
                                          "kept its metadata only)")
                raise corrupted("names no stored blob")
            if length != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
                raise corrupted(f"has {length!r} bytes, not those of {dtype} {list(shape)}")
            if blob not in read:
                try:
                    read[blob] = self._packs.read(blob, pack, offset, length)
                except BlobError as exc:
                    if isinstance(pack, str) and pack.startswith("blobs/spool-") and not (self.root / pack).exists():
                        raise _SpoolGone(pack) from None
                    raise corrupted(str(exc)) from None
            data = bytearray(read[blob]) if blob in used else read[blob]
            used.add(blob)
            arrays[name] = np.frombuffer(data, dtype=dtype).reshape(shape)
        return arrays

    def tensors(self, msg_id: int, prefix: str | None = None) -> dict[str, Any]:
        return {k: torch.from_numpy(v.copy()) for k, v in self.arrays(msg_id, prefix).items()}

    def export(self, msg_id: int, out: str | Path) -> Path:
        out = Path(out)
        if out.suffix != ".safetensors":
            raise TrafficLogError(f"--out: must end in .safetensors, got {out.name!r}")
        info = self.message(msg_id)
        arrays = self.arrays(msg_id)
        meta = {
            "round": str(info.round),
            "direction": info.direction,
            "src_node": str(info.src_node),
            "dst_node": str(info.dst_node),
            "message_type": info.message_type,
            "metrics": json.dumps(info.metrics),
            "config": json.dumps(info.config),
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        save_file(arrays, str(tmp), metadata=meta)
        os.replace(tmp, out)
        return out

    def rounds(self) -> list[int]:
        return [r for (r,) in self._conn.execute("SELECT DISTINCT round FROM messages WHERE round IS NOT NULL ORDER BY round")]

    def clients(self) -> list[int]:
        rows = self._conn.execute(
            "SELECT DISTINCT CASE direction WHEN 'down' THEN dst_node ELSE src_node END FROM messages"
        )
        return sorted(int(n) for (n,) in rows)

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0])

    def _info(self, row: tuple) -> MessageInfo:
        try:
            (mid, rnd, direction, src, dst, mtype, fid, reply_to, group, nbytes, sha, created, logged,
             metrics, config, error, kept) = row
            tensors = tuple(
                TensorInfo(str(name), tuple(int(n) for n in json.loads(shape)), str(dtype), float(l2))
                for name, shape, dtype, l2 in self._conn.execute(
                    "SELECT name, shape, dtype, l2 FROM tensors WHERE message = ? ORDER BY rowid", (mid,)
                )
            )
            info = MessageInfo(
                id=mid, round=rnd, direction=direction, src_node=int(src), dst_node=int(dst),
                message_type=mtype, flower_id=fid, reply_to=reply_to, group_id=group, num_bytes=nbytes, sha256=sha,
                created_at=created, logged_at=logged, metrics=json.loads(metrics), config=json.loads(config),
                error=error, tensors=tensors, kept=bool(kept),
            )
        except TrafficLogError:
            raise
        except (ValueError, TypeError) as exc:  # a row the writer never wrote
            raise TrafficLogError(f"RUN_DIR: corrupted traffic log (message row {row[0] if row else '?'}: {exc})") from None
        if not isinstance(info.metrics, dict) or not isinstance(info.config, dict):
            raise TrafficLogError(f"RUN_DIR: corrupted traffic log (message {mid}'s metrics or config is not a table)")
        return info


class TrafficView:
    """The read-only queries of a traffic log and nothing else (no paths, no writer).

    This is what adversary roles get: every message the tap recorded, through
    queries that name no path, so a role has no direct way to the run directory
    and the ground-truth sidecar beside it (tests check a role never opens it).
    """

    __slots__ = ("messages", "message", "tensors", "arrays", "rounds", "clients")

    def __init__(self, log: TrafficLog) -> None:
        self.messages = log.messages
        self.message = log.message
        self.tensors = log.tensors
        self.arrays = log.arrays
        self.rounds = log.rounds
        self.clients = log.clients
