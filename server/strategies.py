"""Aggregation rules, one per protocol, chosen by name.

Each takes the global shared state and the clients' replies (content and example
count) and returns the next global shared state. Averages are weighted by the
number of examples and accumulated in float64 so the order of replies barely
matters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from flwr.app import RecordDict

from fl_sim.config import FederationConfig

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Reply:
    content: RecordDict
    num_examples: int


def weighted_mean(replies: Sequence[Reply], record: str) -> State:
    total = sum(r.num_examples for r in replies)
    if total <= 0:
        raise ValueError("aggregation: clients reported no examples")
    acc: dict[str, torch.Tensor] = {}
    for reply in replies:
        if reply.num_examples == 0:  # a client that refused the round (e.g. its vetting defense)
            continue
        weight = reply.num_examples / total
        for key, value in reply.content[record].to_torch_state_dict().items():
            term = value.to(torch.float64) * weight
            acc[key] = acc[key] + term if key in acc else term
    return acc


def _cast_like(new: State, like: State) -> State:
    return {k: v.to(like[k].dtype) for k, v in new.items()}


Aggregator = Callable[[State, Sequence[Reply], FederationConfig], State]
AGGREGATORS: dict[str, Aggregator] = {}


def register(name: str) -> Callable[[Aggregator], Aggregator]:
    def wrap(fn: Aggregator) -> Aggregator:
        AGGREGATORS[name] = fn
        return fn

    return wrap


def _ours(mean: State, state: State) -> State:
    """Only the global model's tensors (a malicious server's inserted block feeds its attack, not the model)."""
    return {k: v for k, v in mean.items() if k in state}


@register("fedsgd")
def fedsgd(state: State, replies: Sequence[Reply], cfg: FederationConfig) -> State:
    """w <- w - lr * mean(g); running statistics (if sent) are averaged."""
    grad = _ours(weighted_mean(replies, "arrays"), state)
    new = dict(state)
    for key, g in grad.items():
        new[key] = (state[key].to(torch.float64) - cfg.lr * g).to(state[key].dtype)
    if all("buffers" in r.content for r in replies):
        new.update(_cast_like(_ours(weighted_mean(replies, "buffers"), state), state))
    return new


@register("fedavg")
def fedavg(state: State, replies: Sequence[Reply], cfg: FederationConfig) -> State:
    """Mean of the clients' weights, or w + mean(delta) when clients upload deltas."""
    mean = _ours(weighted_mean(replies, "arrays"), state)
    if cfg.upload == "delta":
        mean = {k: state[k].to(torch.float64) + v for k, v in mean.items()}
    new = dict(state)
    new.update(_cast_like(mean, state))
    return new


def aggregate(state: State, replies: Sequence[Reply], cfg: FederationConfig) -> State:
    """The next global state; clients that trained on nothing (refused the round) do not count,
    and when every client refused, the state stays as it was."""
    counted = [r for r in replies if r.num_examples > 0]
    if not counted:
        return dict(state)
    return AGGREGATORS[cfg.protocol](state, counted, cfg)
