"""A tap on the server's Grid: records every message that crosses it, both ways.

Wrapping the Grid a ServerApp receives sees exactly what the server sends and
receives, whatever the app's own code does, so the same tap serves our own
simulation and an unmodified user app. ``send_and_receive`` is re-implemented on
top of the wrapped push/pull so no message can bypass the recording.

Recording costs the round little: the tap views each tensor's bytes where Flower keeps them,
computes the wire size from the records' structure, and hands the message to the writer's
thread; hashing, storing and the adversary's callback happen there, in message order.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.serde import config_record_to_proto, metric_record_to_proto
from flwr.serverapp import Grid

from adversary.payload import BroadcastPayloads, TensorPayload, payload_of_array, payload_of_npy, wire_size
from adversary.roles.base import Intercept
from adversary.traffic_log import OutgoingRecord
from adversary.traffic_writer import TrafficWriter
from fl_sim.wire import SERVER_ROUND

LEGACY_METRICS = ".metrics"  # fitres.metrics, evaluateres.metrics


def flatten_content(content: RecordDict, arrays: Callable[[Array], TensorPayload] = payload_of_array,
                    ) -> tuple[dict[str, TensorPayload], dict[str, Any], dict[str, Any]]:
    """Split a RecordDict into ``record/key`` tensors, metrics and config values.

    Arrays a ConfigRecord carries as ``.npy`` bytes (SecAgg+ uploads its masked vectors
    as ``secaggplus_configs/masked_params``, a list of them) are also recorded as
    tensors, named ``record/key`` or ``record/key/<index>`` for a list; the config
    keeps only their byte counts, like any bytes value. ``arrays`` reads a Flower Array's payload.
    """
    tensors: dict[str, TensorPayload] = {}
    metrics: dict[str, Any] = {}
    config: dict[str, Any] = {}
    for rname, record in content.items():
        if isinstance(record, ArrayRecord):
            for key, array in record.items():
                tensors[f"{rname}/{key}"] = arrays(array)
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
                        if (array := payload_of_npy(item)) is not None:
                            tensors[f"{rname}/{k}/{i}"] = array
                elif (array := payload_of_npy(v)) is not None:
                    tensors[f"{rname}/{k}"] = array
    return tensors, metrics, config


def record_digests(content: RecordDict) -> tuple[tuple[str, str], ...]:
    """The digest of each record that is not an ArrayRecord (its deterministic protobuf bytes; small,
    but for SecAgg+'s masked vectors); an ArrayRecord's tensors are digested one by one by the writer."""
    out = []
    for rname, record in content.items():
        if isinstance(record, MetricRecord):
            raw = metric_record_to_proto(record).SerializeToString(deterministic=True)
        elif isinstance(record, ConfigRecord):
            raw = config_record_to_proto(record).SerializeToString(deterministic=True)
        else:
            continue
        out.append((rname, hashlib.sha256(raw).hexdigest()))
    return tuple(out)


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
        self._broadcast = BroadcastPayloads()

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
            reader = self._broadcast.of if direction == "down" else payload_of_array
            tensors, metrics, config = flatten_content(message.content, reader)
            num_bytes, digest, parts = wire_size(message.content), "", record_digests(message.content)
            error = None
        else:
            tensors, metrics, config = {}, {}, {}
            num_bytes, digest, parts = 0, hashlib.sha256(b"").hexdigest(), ()
            error = f"{message.error.code}: {message.error.reason}"
        if direction == "down":
            rnd = _round_of(message, config)
            if flower_id:
                self._round_of_request[flower_id] = rnd
        else:
            rnd = self._round_of_request.get(meta.reply_to_message_id, _round_of(message, config))
        observe = self._observe
        event = (rnd, direction, meta.src_node_id, meta.dst_node_id, meta.message_type)
        self._writer.submit(
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
                record_digests=parts,
                error=error,
            ),
            then=None if observe is None else lambda log_id: observe(Intercept(log_id, *event)),
        )
