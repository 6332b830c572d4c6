"""Aggregation rules, one per protocol, chosen by name: the next global state from a round's mean.

Each rule takes the global shared state and the examples-weighted mean of what the
counted clients sent, and returns the next global shared state. Means are
accumulated in float64 so the order of replies barely matters, one reply at a
time (:class:`RunningMean`), so a round never holds every client's model at once.
Tensors the global model does not have (a malicious server's inserted block) are
ignored.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from flwr.app import RecordDict

from fl_sim.config import FederationConfig
from fl_sim.registry import Registry
from fl_sim.wire import ARRAYS, BUFFERS

State = dict[str, torch.Tensor]


class RunningMean:
    """The examples-weighted float64 mean of the replies' ``arrays`` and, when every counted reply
    sent them, ``buffers``; each reply is folded in as it arrives and can then be dropped."""

    def __init__(self) -> None:
        self.total = 0
        self._sums: dict[str, State] = {ARRAYS: {}, BUFFERS: {}}
        self._all_buffers = True

    def add(self, content: RecordDict, num_examples: int) -> None:
        if num_examples <= 0:  # a refusing client (e.g. its vetting defense) adds nothing
            return
        self.total += num_examples
        self._all_buffers = self._all_buffers and BUFFERS in content
        for record in (ARRAYS, BUFFERS):
            if record not in content:
                continue
            sums = self._sums[record]
            for key, value in content[record].to_torch_state_dict().items():
                term = value.to(torch.float64) * num_examples
                sums[key] = sums[key].add_(term) if key in sums else term

    def mean(self) -> State:
        if self.total <= 0:
            raise ValueError("aggregation: clients reported no examples")
        records = (ARRAYS, BUFFERS) if self._all_buffers else (ARRAYS,)
        return {k: v / self.total for record in records for k, v in self._sums[record].items()}


def _cast_like(new: State, like: State) -> State:
    return {k: v.to(like[k].dtype) for k, v in new.items()}


Rule = Callable[[State, State, FederationConfig, frozenset[str]], State]
RULES = Registry("aggregation rule")


@RULES.register("fedsgd")
def fedsgd(state: State, mean: State, cfg: FederationConfig, params: frozenset[str]) -> State:
    """w <- w - lr * mean(g) for parameters; running statistics (if sent) are averaged."""
    new = dict(state)
    for key, value in mean.items():
        if key not in state:
            continue
        if key in params:
            new[key] = (state[key].to(torch.float64) - cfg.lr * value).to(state[key].dtype)
        else:
            new[key] = value.to(state[key].dtype)
    return new


@RULES.register("fedavg")
def fedavg(state: State, mean: State, cfg: FederationConfig, params: frozenset[str]) -> State:
    """Mean of the clients' weights, or w + mean(delta) when clients upload deltas."""
    ours = {k: v for k, v in mean.items() if k in state}
    if cfg.upload == "delta":
        ours = {k: state[k].to(torch.float64) + v for k, v in ours.items()}
    new = dict(state)
    new.update(_cast_like(ours, state))
    return new


def next_state(state: State, mean: State, num_examples: int, cfg: FederationConfig, params: frozenset[str]) -> State:
    """The next global state; when every client refused the round (no examples), the state stays."""
    if num_examples <= 0:
        return dict(state)
    return RULES[cfg.protocol](state, mean, cfg, params)
