"""The interface the server's loops drive: configure a round, then aggregate what came back.

Both loops (the Message-API loop and Flower's legacy SecAgg+ workflow) talk to a
:class:`RoundStrategy` and nothing else, in the manner of Flower's own
strategies; so a wrapper can change what a round sends and what the server does
with the result without either loop knowing (a malicious server wraps the honest
strategy, as Flower's DP wrappers wrap a strategy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import Tensor


@dataclass(frozen=True)
class RoundPlan:
    """What the server sends in one round (for training or evaluation): tensors in wire order, instruction config."""

    tensors: dict[str, Tensor]
    config: dict[str, Any]


@dataclass(frozen=True)
class RoundUpdate:
    """What the server learns from one round's training replies.

    ``mean`` is the examples-weighted mean (float64) of every tensor the counted
    replies carried (the global model's and any others); under secure aggregation
    it is all the server learns (``visible_replies`` False). ``num_examples`` counts
    the examples behind it; zero when every client refused the round.
    """

    round: int
    mean: dict[str, Tensor]
    num_examples: int
    nodes: tuple[int, ...]
    protocol: str
    visible_replies: bool = True
    metrics: dict[str, float] = field(default_factory=dict)


class RoundStrategy(Protocol):
    """The server's decisions; the loops do the messaging, sampling, evaluation and logging."""

    def configure_train(self, rnd: int) -> RoundPlan:
        """What to send for training in round ``rnd``."""
        ...

    def configure_evaluate(self, rnd: int) -> RoundPlan | None:
        """What to send the clients to evaluate after round ``rnd``; None: the server evaluates itself."""
        ...

    def aggregate_train(self, update: RoundUpdate) -> None:
        """Take a round's aggregate into the global model (or not)."""
        ...

    def global_state(self) -> dict[str, Tensor]:
        """The global model's shared tensors (the final model)."""
        ...

    def evaluate_global(self) -> tuple[float, float]:
        """Server-side test loss and accuracy of the global model."""
        ...
