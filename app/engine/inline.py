"""An in-process Grid: the same ServerApp and ClientApp, no Ray.

For tests, debugging and machines without Ray. Messages are copied on the way out
and back, so neither side holds the other's objects: the envelope and every record but
the tensors through Flower's own protobuf serialisation, as on a real link; the tensors
as new Arrays over the same bytes, which are immutable (so neither side can change the
other's tensors). Serialising the tensors as well cost 0.28 s a message for the
ResNet-18's 45 MB, more than a client's whole round; Flower's own simulation does not
serialise them either. Node ids are drawn from the
run seed exactly as the Ray engine draws them, so both engines sample the same
clients.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable
from uuid import UUID

from flwr.app import Array, ArrayRecord, Context, Error, Message, RecordDict
from flwr.app.message.message import make_message
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fl_sim.node_ids import node_ids_for


def _copy(message: Message) -> Message:
    if not message.has_content():
        return message_from_proto(message_to_proto(message))
    tensors = {key: record for key, record in message.content.items() if isinstance(record, ArrayRecord)}
    rest = RecordDict({key: record for key, record in message.content.items() if key not in tensors})
    copied = message_from_proto(message_to_proto(make_message(metadata=message.metadata, content=rest)))
    arrays = {key: ArrayRecord({name: Array(a.dtype, a.shape, a.stype, a.data) for name, a in record.items()})
              for key, record in tensors.items()}
    copied.content = RecordDict({key: arrays[key] if key in arrays else copied.content[key] for key in message.content})
    return copied


class InlineGrid(Grid):
    def __init__(self, client_app: ClientApp, num_nodes: int, seed: int) -> None:
        self._rng = random.Random(f"inline-{seed}")
        self._client_app = client_app
        self._run = Run.create_empty(run_id=self._rng.getrandbits(63))
        self._node_ids = node_ids_for(seed, num_nodes)
        self._contexts = {
            node: Context(
                run_id=self._run.run_id,
                node_id=node,
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config={},
            )
            for i, node in enumerate(self._node_ids)
        }
        self._node_ids.sort()
        self._inbox: dict[str, Message] = {}
        self._lock = threading.RLock()

    def _new_id(self) -> str:
        return str(UUID(int=self._rng.getrandbits(128), version=4))

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._node_ids)

    def get_nodes(self) -> Iterable[NodeInfo]:
        return [NodeInfo(node_id=n) for n in self._node_ids]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        with self._lock:
            return self._push(messages)

    def _push(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for message in messages:
            if message.metadata.dst_node_id not in self._contexts:
                raise ValueError(f"unknown destination node {message.metadata.dst_node_id}")
            message.metadata.__dict__["_message_id"] = self._new_id()
            self._inbox[message.metadata.message_id] = message  # copied as it is delivered: one model at a time
            ids.append(message.metadata.message_id)
        return ids

    def _deliver(self, message: Message) -> Message:
        node = message.metadata.dst_node_id
        message = _copy(message)
        try:
            reply = self._client_app(message, self._contexts[node])
        except Exception as exc:  # a client crash becomes an error reply, as in Flower
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"{type(exc).__name__}: {exc}"), reply_to=message)
        reply.metadata.__dict__["_message_id"] = self._new_id()
        return _copy(reply)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        # Legacy strategies talk to the Grid from several threads; clients run one at a time.
        with self._lock:
            pending = [self._inbox.pop(mid) for mid in list(message_ids) if mid in self._inbox]
            return [self._deliver(message) for message in pending]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return list(self.pull_messages(self.push_messages(messages)))


def run_inline(server_app: ServerApp, client_app: ClientApp, num_nodes: int, seed: int) -> None:
    grid = InlineGrid(client_app, num_nodes, seed)
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = grid.run.run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    context = Context(run_id=grid.run.run_id, node_id=SUPERLINK_NODE_ID, node_config={}, state=RecordDict(), run_config={})
    server_app(grid, context)
