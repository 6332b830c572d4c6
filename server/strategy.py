"""The honest server's strategy: the global model, what it sends, how it aggregates.

It implements :class:`fl_sim.rounds.RoundStrategy`: the loops ask it what to send
each round and hand it the round's aggregate; wrappers (a malicious server) sit
between the loops and it.
"""

from __future__ import annotations

from typing import Any

import torch

from fl_sim.config import RunConfig
from fl_sim.rounds import RoundUpdate, RoundPlan
from fl_sim.task import load_task, evaluate_model
from fl_sim.wire import BATCH_SIZE, LOCAL_STEPS, LR, PROTOCOL, SERVER_ROUND
from server.aggregation import next_state


class FedStrategy:
    """FedSGD / FedAvg on the shared tensors of the task's model (FedBN: BatchNorm stays with the clients)."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.task = load_task(config)
        self.model = self.task.new_model()
        self.shared_keys = self.task.shared_keys(self.model)
        self.param_keys = frozenset(k for k, _ in self.model.named_parameters())
        sd = self.model.state_dict()
        self.state = {k: sd[k].clone() for k in self.shared_keys}

    def round_config(self, rnd: int) -> dict[str, Any]:
        """The recipe the server announces with every training instruction."""
        fed = self.config.federation
        return {SERVER_ROUND: rnd, LR: fed.lr, LOCAL_STEPS: fed.steps_per_update, BATCH_SIZE: fed.batch_size,
                PROTOCOL: fed.protocol}

    def configure_train(self, rnd: int) -> RoundPlan:
        return RoundPlan(dict(self.state), self.round_config(rnd))

    def configure_evaluate(self, rnd: int) -> RoundPlan | None:
        """FedBN models are only meaningful with each client's own BatchNorm layers: the clients evaluate them."""
        return RoundPlan(dict(self.state), self.round_config(rnd)) if self.task.eval_on_clients(self.model) else None

    def aggregate_train(self, update: RoundUpdate) -> None:
        self.state = next_state(self.state, update.mean, update.num_examples, self.config.federation, self.param_keys)

    def global_state(self) -> dict[str, torch.Tensor]:
        return self.state

    def evaluate_global(self) -> tuple[float, float]:
        self.model.load_state_dict(self.state, strict=False)
        x, y = self.task.test_split
        return evaluate_model(self.model, x, y, self.config.eval.batch_size)
