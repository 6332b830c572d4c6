"""A round folds replies in as they arrive, a few at a time, and sends one copy of the model to everyone."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict

from fl_sim.rounds import RoundPlan
from fl_sim.wire import ARRAYS, BUFFERS, METRICS, NUM_EXAMPLES
from server.aggregation import RunningMean
from server.loop import PULL_CHUNK, _gather, _messages
from server.rounds import ClientFailure


def _reply(rng: np.random.Generator, examples: int, buffers: bool) -> RecordDict:
    content = RecordDict({ARRAYS: ArrayRecord({"w": torch.from_numpy(rng.standard_normal((3, 4)).astype(np.float32))}),
                          METRICS: MetricRecord({NUM_EXAMPLES: examples})})
    if buffers:
        content[BUFFERS] = ArrayRecord({"bn.mean": torch.from_numpy(rng.standard_normal(4).astype(np.float32))})
    return content


@pytest.mark.parametrize("with_buffers", [True, False])
def test_the_running_mean_is_the_examples_weighted_mean(with_buffers: bool) -> None:
    rng = np.random.default_rng(0)
    replies = [(_reply(rng, n, with_buffers or i != 2), n) for i, n in enumerate([3, 0, 5, 8, 1])]
    mean = RunningMean()
    for content, n in replies:
        mean.add(content, n)
    counted = [(c, n) for c, n in replies if n > 0]
    total = sum(n for _, n in counted)
    expected = sum(c[ARRAYS]["w"].numpy().astype(np.float64) * n for c, n in counted) / total
    got = mean.mean()
    assert mean.total == 17 and got["w"].dtype == torch.float64
    np.testing.assert_allclose(got["w"].numpy(), expected, rtol=1e-12)
    assert ("bn.mean" in got) == with_buffers  # buffers only when every counted reply sent them
    with pytest.raises(ValueError, match="no examples"):
        RunningMean().mean()


@pytest.fixture(autouse=True)
def _task_identity():
    """Flower's messages need a run, as run_inline sets it up."""
    from flwr.supercore.task_identity import TaskIdentity

    before = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 7, 0
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = before


class _Grid:
    """Answers pulls a chunk at a time, like the inline engine; counts replies alive at once."""

    def __init__(self) -> None:
        self.inbox: dict[str, object] = {}
        self.most_pulled = 0

    def push_messages(self, messages):
        ids = []
        for i, m in enumerate(messages):
            mid = f"m{i}"
            self.inbox[mid] = m
            ids.append(mid)
        return ids

    def pull_messages(self, ids):
        ids = list(ids)
        self.most_pulled = max(self.most_pulled, len(ids))
        out = []
        for mid in ids:
            self.inbox.pop(mid)
            out.append(SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=mid), has_error=lambda: False))
        return out


def test_replies_are_pulled_a_few_at_a_time_and_the_model_is_shared() -> None:
    plan = RoundPlan(tensors={"w": torch.ones(4)}, config={"lr": 0.1})
    messages = _messages(plan, list(range(10, 30)), 1, "train")
    assert len({id(m.content) for m in messages}) == 1  # one serialised model for all twenty clients
    grid, seen = _Grid(), []
    _gather(grid, messages, seen.append)
    assert len(seen) == 20 and grid.most_pulled == PULL_CHUNK


def test_replies_that_arrive_in_the_engines_order_are_taken_as_they_arrive() -> None:
    """Flower's Ray backend answers in its own order (by node): a reply that is in must be folded at the
    next poll, not left in the link state until the ones before it in our list are in."""

    class OwnOrder(_Grid):
        def __init__(self) -> None:
            super().__init__()
            self.arrived: set[str] = set()
            self.most_waiting = 0

        def pull_messages(self, ids):
            if (order := [m for m in reversed(self.inbox) if m not in self.arrived]):
                self.arrived.add(order[0])  # one more reply in, the last of ours first
            self.most_waiting = max(self.most_waiting, len(self.arrived & set(self.inbox)))
            return super().pull_messages([m for m in ids if m in self.arrived and m in self.inbox])

    messages = _messages(RoundPlan(tensors={"w": torch.ones(2)}, config={}), list(range(40)), 1, "train")
    grid, seen = OwnOrder(), []
    _gather(grid, messages, seen.append)
    # one reply comes in per pull: a reply waits at most one sweep over the pending chunks, not the whole round
    assert len(seen) == 40 and grid.most_waiting <= len(messages) // PULL_CHUNK, grid.most_waiting


def test_a_failed_client_fails_the_round_in_one_line() -> None:
    class Failing(_Grid):
        def pull_messages(self, ids):
            got = super().pull_messages(ids)
            got[0] = SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=got[0].metadata.reply_to_message_id,
                                                              src_node_id=42),
                                     has_error=lambda: True, error=SimpleNamespace(reason="out of memory"))
            return got

    messages = _messages(RoundPlan(tensors={"w": torch.ones(2)}, config={}), [1, 2, 3], 1, "train")
    with pytest.raises(ClientFailure, match="client 42 failed: out of memory"):
        _gather(Failing(), messages, lambda r: None)


def test_the_inline_engine_copies_a_message_so_neither_side_holds_the_others_objects() -> None:
    """The envelope and the small records go through protobuf; the tensors are new Arrays over the same
    (immutable) bytes: equal content, no shared record, no shared Array, nothing either side can change."""
    from flwr.app import ConfigRecord, Message
    from flwr.common.serde import message_to_proto

    from app.engine.inline import _copy

    rng = np.random.default_rng(1)
    content = _reply(rng, 4, True)
    content["config"] = ConfigRecord({"lr": 0.1, "server-round": 3})
    message = Message(content, 5, "train", group_id="3")
    copied = _copy(message)
    assert message_to_proto(copied) == message_to_proto(message)  # what a real link would carry
    assert copied.metadata is not message.metadata and copied.content is not message.content
    for key in (ARRAYS, BUFFERS):
        ours, theirs = copied.content[key], message.content[key]
        assert ours is not theirs and all(ours[n] is not theirs[n] and isinstance(ours[n].data, bytes) for n in ours)
    copied.content["config"]["lr"] = 1.0
    copied.content[ARRAYS]["w"] = ArrayRecord({"w": torch.zeros(3, 4)})["w"]
    assert message.content["config"]["lr"] == 0.1 and message.content[ARRAYS]["w"].numpy().any()
