"""The traffic log's writer: off the round's critical path, each distinct tensor stored once.

The tap hands a message over and returns; one writer thread hashes its tensors, appends the new
ones to the tensor store, and commits the message's index rows, in the order the messages came.
The queue is bounded in bytes, so a slow disk slows the tap down instead of filling memory. Work
handed over after a message (an adversary's callback) runs only once that message is committed.

With a keep policy (adversary.tap_policy), a message the policy does not keep still gets all its
index rows, and its new tensors go to its round's spool: the adversary reads them there while it
happens. When round r + ``spool_rounds`` + 1 begins (or the log closes), round r's spool is
dropped, except the tensors of messages an attack job names (``pinned``) and of the instructions
those answer: they move into a pack and are kept.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from adversary.payload import ByIdentity, TensorPayload, payload_of_ndarray
from adversary.tensor_store import PackReader, PackWriter, SpoolWriter, digest_of
from adversary.traffic_log import (
    DIRECTIONS,
    INDEX_DB,
    SCHEMA_VERSION,
    TRAFFIC_DIR,
    MessageMeta,
    OutgoingRecord,
    connect_index,
    create_schema,
)

QUEUE_BYTES = 256 << 20  # tensors waiting to be written, at most (one more message is always let in)
_SHARED_CACHE_BYTES = 256 << 20  # broadcast tensors whose digest is remembered by identity
_NORM_CACHE = 4096


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": len(value)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _l2(payload: TensorPayload) -> float:
    if not payload.nbytes:
        return 0.0
    values = np.frombuffer(payload.data, dtype=np.dtype(payload.dtype))
    if values.dtype.kind not in "fiu":
        return 0.0
    # einsum, not np.linalg.norm: BLAS would wake its own thread pool, which competes with the clients' torch
    # threads for the cores (measured: every client step 2-3x slower while the writer ran)
    return math.sqrt(float(np.einsum("i,i->", values, values, dtype=np.float64)))


def message_digest(tensors: list[tuple[str, TensorPayload, str]], record_digests: tuple[tuple[str, str], ...]) -> str:
    """SHA-256 of the message's content manifest: each tensor's name, dtype, shape and digest, and each
    other record's digest. Equal content, equal digest; it does not need the content serialised again."""
    manifest = [[name, p.dtype, list(p.shape), digest] for name, p, digest in tensors] + [list(r) for r in record_digests]
    return hashlib.sha256(json.dumps(manifest, separators=(",", ":")).encode()).hexdigest()


class _Digests:
    """Digests of tensors the tap saw before, by the identity of the immutable bytes they live in
    (the same broadcast model handed to a hundred clients is hashed once), and their norms."""

    def __init__(self) -> None:
        self._by_owner: ByIdentity[str] = ByIdentity(_SHARED_CACHE_BYTES)
        self._norms: OrderedDict[tuple[str, str], float] = OrderedDict()

    def digest(self, payload: TensorPayload, remember: bool) -> str:
        owner = payload.owner
        if owner is not None and (hit := self._by_owner.get(owner)) is not None:
            return hit
        digest = digest_of(payload.data)
        return self._by_owner.put(owner, digest) if owner is not None and remember else digest

    def norm(self, payload: TensorPayload, digest: str) -> float:
        key = (digest, payload.dtype)
        if (value := self._norms.get(key)) is None:
            value = self._norms[key] = _l2(payload)
            if len(self._norms) > _NORM_CACHE:
                self._norms.popitem(last=False)
        return value


def _yield_cpu() -> None:
    """Run the writer thread at the lowest priority: on a machine whose cores the clients' torch threads
    keep busy, a competing thread slows every step they take (their thread pool waits for the slowest);
    at low priority the writer takes the gaps, and the bounded queue holds the tap back when it must."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):  # not Linux, or not allowed: the writer just competes
        pass


class TrafficWriter:
    """Append-only writer, one per run; safe to share between the server's threads.

    ``submit`` hands a message over and returns at once; ``append`` waits for its id. ``close`` (or
    ``flush``) waits until everything handed over is committed, and re-raises a failed write.
    """

    def __init__(self, run_dir: str | Path, *, queue_bytes: int = QUEUE_BYTES,
                 keep: Callable[[MessageMeta], bool] | None = None, pinned: Callable[[], set[int]] | None = None,
                 spool_rounds: int = 1) -> None:
        self.root = Path(run_dir) / TRAFFIC_DIR
        self.root.mkdir(parents=True, exist_ok=True)
        self._conn = connect_index(self.root / INDEX_DB)
        create_schema(self._conn)
        self._packs = PackWriter(self.root)
        self._spools = SpoolWriter(self.root)
        self._own = PackReader(self.root)  # reads spooled blobs back to keep them
        self._keep, self._pinned, self._spool_rounds = keep, pinned, spool_rounds
        self._round = 0
        self._digests = _Digests()
        self._queue: queue.Queue[tuple[Any, Future[Any], int] | None] = queue.Queue()
        self._budget = threading.Condition()
        self._pending = 0
        self._queue_bytes = queue_bytes
        self._error: BaseException | None = None
        self._doing = self._failed = "the traffic log could not be written"
        self._closed = False
        self._thread = threading.Thread(target=self._drain, name="traffic-writer", daemon=True)
        self._thread.start()

    # -- handing work over --------------------------------------------------
    def submit(self, record: OutgoingRecord, then: Callable[[int], None] | None = None) -> Future[int]:
        """Queue ``record``; ``then(message id)`` runs in the writer thread once it is committed."""
        if record.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {record.direction!r}")
        # a numpy array is copied: the caller may change it before the writer gets to it
        payloads = {k: v if isinstance(v, TensorPayload) else payload_of_ndarray(np.array(v, copy=True))
                    for k, v in record.tensors.items()}
        size = sum(p.nbytes for p in payloads.values())
        return self._put((record, payloads, then), size)

    def append(self, record: OutgoingRecord) -> int:
        return self.submit(record).result()

    def call_after(self, fn: Callable[[], None]) -> Future[None]:
        """Run ``fn`` in the writer thread after every message handed over before it is committed."""
        return self._put(fn, 0)

    def _put(self, item: Any, size: int) -> Future[Any]:
        self._raise_failure()
        if self._closed:
            raise RuntimeError("the traffic writer is closed")
        with self._budget:
            self._budget.wait_for(lambda: self._pending == 0 or self._pending + size <= self._queue_bytes
                                  or self._error is not None)
            self._pending += size
        self._raise_failure()
        future: Future[Any] = Future()
        self._queue.put((item, future, size))
        return future

    def flush(self) -> None:
        self.call_after(lambda: None).result()
        self._raise_failure()

    def close(self) -> None:
        """Commit everything handed over, settle every spool (the adversary is done by now), close."""
        if self._closed:
            return
        try:
            self.call_after(lambda: [self._release(n) for n in self._spools.rounds()]).result()
            self._raise_failure()
        finally:
            self._closed = True
            self._queue.put(None)
            self._thread.join()
            self._packs.close()
            self._spools.close()
            self._own.close()
            self._conn.close()

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"{self._failed}: {self._error}") from self._error

    # -- the writer thread --------------------------------------------------
    def _drain(self) -> None:
        _yield_cpu()
        while (entry := self._queue.get()) is not None:
            item, future, size = entry
            try:
                if callable(item):
                    self._doing = "a callback after the traffic log's messages failed"
                    future.set_result(item())
                else:
                    record, payloads, then = item
                    msg_id = self._commit(record, payloads)
                    future.set_result(msg_id)
                    if then is not None:
                        self._doing = f"the callback after message {msg_id} failed"
                        then(msg_id)
            except BaseException as exc:  # kept, and raised in the thread that hands the next message over
                if self._error is None:
                    self._error, self._failed = exc, self._doing
                if not future.done():
                    future.set_exception(exc)
            finally:
                self._doing = "the traffic log could not be written"
                with self._budget:
                    self._pending -= size
                    self._budget.notify_all()

    def _commit(self, record: OutgoingRecord, payloads: Mapping[str, TensorPayload]) -> int:
        if record.round is not None and record.round > self._round:
            self._round = record.round
            for number in self._spools.rounds():
                if number < self._round - self._spool_rounds:
                    self._release(number)
        kept = self._keep is None or self._keep(record)
        spool = None if kept else (record.round if record.round is not None else self._round)
        remember = record.direction == "down"  # a broadcast's bytes recur; an upload's are its own
        hashed = [(name, p, self._digests.digest(p, remember)) for name, p in payloads.items()]
        digest = record.sha256 or message_digest(hashed, record.record_digests)
        try:
            cur = self._conn.execute(
                "INSERT INTO messages (round, direction, src_node, dst_node, message_type, flower_id,"
                " reply_to, group_id, num_bytes, sha256, created_at, logged_at, metrics, config, error, kept)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (record.round, record.direction, str(record.src_node), str(record.dst_node), record.message_type,
                 record.flower_id, record.reply_to, record.group_id, record.num_bytes, digest, record.created_at,
                 time.time(), json.dumps({k: _jsonable(v) for k, v in record.metrics.items()}),
                 json.dumps({k: _jsonable(v) for k, v in record.config.items()}), record.error, int(kept)),
            )
            msg_id = int(cur.lastrowid)
            rows = []
            for name, payload, blob in hashed:
                self._store(blob, payload, spool)
                rows.append((msg_id, name, json.dumps(list(payload.shape)), payload.dtype,
                             self._digests.norm(payload, blob), blob))
            self._conn.executemany("INSERT INTO tensors (message, name, shape, dtype, l2, blob) VALUES (?, ?, ?, ?, ?, ?)", rows)
            self._conn.commit()
        except BaseException:
            self._conn.rollback()
            raise
        return msg_id

    def _store(self, blob: str, payload: TensorPayload, spool: int | None) -> None:
        """The blob's bytes, once: written (to a pack, or to the round's spool when the message is not
        kept) before the row that names them is committed. A kept message's blob leaves the spool."""
        row = self._conn.execute("SELECT pack FROM blobs WHERE digest = ?", (blob,)).fetchone()
        if row is not None:
            if spool is None and row[0].startswith("blobs/spool-"):
                self._move_to_pack(blob, payload.data)
            return
        pack, offset = self._packs.write(payload.data) if spool is None else self._spools.write(spool, payload.data)
        self._conn.execute("INSERT INTO blobs (digest, pack, offset, length) VALUES (?, ?, ?, ?)",
                           (blob, pack, offset, payload.nbytes))

    def _move_to_pack(self, blob: str, data: memoryview | bytes) -> None:
        pack, offset = self._packs.write(data)
        self._conn.execute("UPDATE blobs SET pack = ?, offset = ? WHERE digest = ?", (pack, offset, blob))

    def _release(self, number: int) -> None:
        """Drop a round's spool; the tensors of messages an attack names (and of the instructions they
        answer) move into a pack first, and those messages count as kept."""
        name = SpoolWriter.name(number)
        pinned = set(self._pinned()) if self._pinned is not None else set()
        rows = self._conn.execute(
            "SELECT DISTINCT t.message, t.blob, b.offset, b.length, m.flower_id FROM tensors t"
            " JOIN blobs b ON b.digest = t.blob JOIN messages m ON m.id = t.message WHERE b.pack = ?", (name,)
        ).fetchall()
        if pinned:
            answered = {r for (r,) in self._conn.execute(
                f"SELECT reply_to FROM messages WHERE id IN ({','.join('?' * len(pinned))})", sorted(pinned)) if r}
            keep = {msg for msg, _, _, _, fid in rows if msg in pinned or (fid and fid in answered)}
        else:
            keep = set()
        try:
            moved: set[str] = set()
            for msg, blob, offset, length, _ in rows:
                if msg in keep and blob not in moved:
                    self._move_to_pack(blob, self._own.read(blob, name, offset, length))
                    moved.add(blob)
            if keep:
                self._conn.execute(f"UPDATE messages SET kept = 1 WHERE id IN ({','.join('?' * len(keep))})", sorted(keep))
            self._conn.execute("DELETE FROM blobs WHERE pack = ?", (name,))
            self._conn.commit()
        except BaseException:
            self._conn.rollback()
            raise
        self._own.forget(name)
        self._spools.drop(number)


__all__ = ["QUEUE_BYTES", "SCHEMA_VERSION", "TrafficWriter", "message_digest"]
