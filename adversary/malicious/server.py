"""Malicious-server manipulations inside the federation: what the server sends.

A manipulation decides, per round, the weights the server broadcasts for
training (``None``: the honest global model). The server keeps aggregating its
honest model; only what it sends is altered. Chosen by name
(``adversary.options.strategy`` of the ``malicious-server`` role).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from adversary.malicious.threat import MaliciousServerError, ServerControl, require
from adversary.malicious.trap_weights import first_linear_layer, trap_weights_


class ServerManipulation(Protocol):
    name: str

    def weights_for(self, round: int, model: nn.Module) -> dict[str, torch.Tensor] | None:
        """The state to broadcast this round (``model`` holds the honest global weights)."""
        ...


MANIPULATIONS: dict[str, Callable[..., ServerManipulation]] = {}


def register(name: str) -> Callable[[Callable[..., ServerManipulation]], Callable[..., ServerManipulation]]:
    def wrap(factory: Callable[..., ServerManipulation]) -> Callable[..., ServerManipulation]:
        MANIPULATIONS[name] = factory
        return factory

    return wrap


@register("trap-weights")
class TrapWeightsServer:
    """Boenisch et al. 2023: trap weights on the first linear layer in the chosen rounds
    (weights-only control: works on the unmodified architecture)."""

    name = "trap-weights"

    def __init__(self, *, input_shape: tuple[int, int, int], rounds: list[int] | None = None, scale: float = 1.05,
                 seed: int = 0) -> None:
        self.input_shape, self.rounds, self.scale, self.seed = tuple(input_shape), list(rounds or []), scale, seed

    def weights_for(self, round: int, model: nn.Module) -> dict[str, torch.Tensor] | None:
        if self.rounds and round not in self.rounds:
            return None
        trapped = trap_weights_(copy.deepcopy(model), self.input_shape, scale=self.scale, seed=self.seed + round)
        return trapped.state_dict()


def build_manipulation(options: dict[str, Any], *, model: nn.Module, input_shape: tuple[int, int, int],
                       control: ServerControl | None = None) -> ServerManipulation:
    """From the role's options; checks the server control it needs and that the model fits."""
    opts = dict(options)
    name = opts.pop("strategy", "trap-weights")
    if name not in MANIPULATIONS:
        raise MaliciousServerError(f"adversary.options.strategy: unknown {name!r}; choose one of: {', '.join(sorted(MANIPULATIONS))}")
    require(control or ServerControl(weights=True), name.replace("-", "_"))
    if name == "trap-weights":
        try:
            first_linear_layer(model)
        except ValueError as exc:
            raise MaliciousServerError(f"adversary.options.strategy: {exc} (use model.name=mlp)") from None
    try:
        return MANIPULATIONS[name](input_shape=input_shape, **opts)
    except TypeError as exc:
        raise MaliciousServerError(f"adversary.options: {exc}") from None
