"""A tap on the server's Grid: records every message that crosses it, both ways.

Wrapping the Grid a ServerApp receives sees exactly what the server sends and
receives, whatever the app's own code does, so the same tap serves our own
simulation and an unmodified user app. ``send_and_receive`` is re-implemented on
top of the wrapped push/pull so no message can bypass the recording.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.serde import recorddict_to_proto
from flwr.serverapp import Grid

from adversary.roles.base import Intercept
from adversary.traffic_log import OutgoingRecord, TrafficWriter
from fl_sim.wire import SERVER_ROUND

LEGACY_METRICS = ".metrics"  # fitres.metrics, evaluateres.metrics


def content_digest(content: RecordDict) -> tuple[int, str]:
    """Wire size (protobuf bytes) and SHA-256 of the message content."""
    raw = recorddict_to_proto(content).SerializeToString(deterministic=True)
    return len(raw), hashlib.sha256(raw).hexdigest()


_NPY_MAGIC = b"\x93NUMPY"


def _npy(value: Any) -> np.ndarray | None:
    """A numpy array serialised with ``np.save`` (Flower's ``ndarray_to_bytes``), else None. Never unpickles."""
    if not isinstance(value, bytes) or not value.startswith(_NPY_MAGIC):
        return None
    try:
        return np.load(io.BytesIO(value), allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return None


def flatten_content(content: RecordDict) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:
    """Split a RecordDict into ``record/key`` tensors, metrics and config values.

    Arrays a ConfigRecord carries as ``.npy`` bytes (SecAgg+ uploads its masked vectors
    as ``secaggplus_configs/masked_params``, a list of them) are also recorded as
    tensors, named ``record/key`` or ``record/key/<index>`` for a list; the config
    keeps only their byte counts, like any bytes value.
    """
    tensors: dict[str, np.ndarray] = {}
    metrics: dict[str, Any] = {}
    config: dict[str, Any] = {}
    for rname, record in content.items():
        if isinstance(record, ArrayRecord):
            for key, array in record.items():
                tensors[f"{rname}/{key}"] = array.numpy()
        elif isinstance(record, MetricRecord):
            metrics.update({f"{rname}/{k}": v for k, v in record.items()})
        elif isinstance(record, ConfigRecord) and rname.endswith(LEGACY_METRICS):
            # Flower's legacy API carries a FitRes/EvaluateRes's metrics in a ConfigRecord: they are metrics
            metrics.update({f"{rname}/{k}": v for k, v in record.items() if isinstance(v, (int, float, bool, str))})
        elif isinstance(record, ConfigRecord):
            for k, v in record.items():
                config[f"{rname}/{k}"] = v
                if isinstance(v, list):
                    for i, item in enumerate(v):
                        if (array := _npy(item)) is not None:
                            tensors[f"{rname}/{k}/{i}"] = array
                elif (array := _npy(v)) is not None:
                    tensors[f"{rname}/{k}"] = array
    return tensors, metrics, config


def _round_of(message: Message, config: dict[str, Any]) -> int | None:
    for key, value in config.items():
        if key.rsplit("/", 1)[-1] == SERVER_ROUND and isinstance(value, int):
            return value
    group = message.metadata.group_id
    return int(group) if group and group.isdigit() else None


class TappedGrid(Grid):
    """Delegates to a real Grid and writes each message to a traffic log.

    ``observe`` (optional) is called with an :class:`Intercept` for each recorded
    message, after it is committed; adversary roles use it to react as messages arrive.
    """

    def __init__(
        self,
        inner: Grid,
        writer: TrafficWriter,
        observe: Callable[[Intercept], None] | None = None,
        pull_interval: float = 0.05,
    ) -> None:
        self._inner = inner
        self._writer = writer
        self._observe = observe
        self._pull_interval = pull_interval
        self._round_of_request: dict[str, int | None] = {}

    # -- plain delegation -------------------------------------------------
    def set_run(self, run: Any) -> None:
        self._inner.set_run(run)

    @property
    def run(self) -> Any:
        return self._inner.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None) -> Message:
        return self._inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._inner.get_node_ids()

    def get_nodes(self) -> Iterable[Any]:
        return self._inner.get_nodes()

    # -- recorded traffic -------------------------------------------------
    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        ids = list(self._inner.push_messages(messages))
        for message, flower_id in zip(messages, ids):
            self._record(message, "down", flower_id=flower_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self._inner.pull_messages(message_ids))
        for reply in replies:
            self._record(reply, "up", flower_id=reply.metadata.message_id or None)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        pending = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending:
            got = list(self.pull_messages(pending))
            replies.extend(got)
            pending.difference_update(r.metadata.reply_to_message_id for r in got)
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(self._pull_interval)
        return replies

    def _record(self, message: Message, direction: str, *, flower_id: str | None) -> None:
        meta = message.metadata
        if message.has_content():
            tensors, metrics, config = flatten_content(message.content)
            num_bytes, digest = content_digest(message.content)
            error = None
        else:
            tensors, metrics, config = {}, {}, {}
            num_bytes, digest = 0, hashlib.sha256(b"").hexdigest()
            error = f"{message.error.code}: {message.error.reason}"
        if direction == "down":
            rnd = _round_of(message, config)
            if flower_id:
                self._round_of_request[flower_id] = rnd
        else:
            rnd = self._round_of_request.get(meta.reply_to_message_id, _round_of(message, config))
        log_id = self._writer.append(
            OutgoingRecord(
                round=rnd,
                direction=direction,
                src_node=meta.src_node_id,
                dst_node=meta.dst_node_id,
                message_type=meta.message_type,
                flower_id=flower_id,
                reply_to=meta.reply_to_message_id or None,
                group_id=meta.group_id or None,
                num_bytes=num_bytes,
                sha256=digest,
                created_at=meta.created_at,
                metrics=metrics,
                config=config,
                tensors=tensors,
                error=error,
            )
        )
        if self._observe is not None:
            self._observe(Intercept(log_id, rnd, direction, meta.src_node_id, meta.dst_node_id, meta.message_type))
