"""Gradient-matching distances between the simulated and the observed update.

``cosine`` is Geiping et al. (2020): scale-invariant, so it matches the direction of the
update and works for FedAvg deltas whose learning rate is unknown. ``l2`` is DLG (Zhu et
al., 2019): the squared Euclidean distance, stronger when the scale is exact.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from adversary.attacks.registry import component_registry
from adversary.attacks.threat_model import Component

OBJECTIVES = component_registry("objective")


class Objective(Component):
    """distance(simulated, observed) over the names both dicts share, in the observed order."""

    def __init__(self, layer_weights: Mapping[str, float] | None = None) -> None:
        self.layer_weights = dict(layer_weights or {})

    def pairs(self, sim: Mapping[str, Tensor], obs: Mapping[str, Tensor]) -> list[tuple[Tensor, Tensor, float]]:
        out = [(sim[k], obs[k].to(sim[k]), float(self.layer_weights.get(k, 1.0))) for k in obs if k in sim]
        if not out:
            raise ValueError("objective: the simulated and the observed update share no tensor names")
        return out

    def __call__(self, sim: Mapping[str, Tensor], obs: Mapping[str, Tensor]) -> Tensor:
        raise NotImplementedError


@OBJECTIVES.register("cosine")
class Cosine(Objective):
    """1 - <g, g'> / (|g| |g'|) over all layers concatenated (optionally weighted per layer)."""

    def __call__(self, sim: Mapping[str, Tensor], obs: Mapping[str, Tensor]) -> Tensor:
        # Dot products, not (s * o).sum(): no tensor of the products is written, and the backward
        # pass is one scaled copy per layer. The observed norm is a constant of the attack.
        dot = sim_sq = 0.0
        obs_sq = torch.zeros(())
        for s, o, w in self.pairs(sim, obs):
            flat_s, flat_o = s.reshape(-1), o.reshape(-1)
            dot = dot + w * torch.dot(flat_s, flat_o)
            sim_sq = sim_sq + w * torch.dot(flat_s, flat_s)
            with torch.no_grad():
                obs_sq = obs_sq.to(flat_o) + w * torch.dot(flat_o, flat_o)
        return 1 - dot / (torch.sqrt(sim_sq) * torch.sqrt(obs_sq) + 1e-12)


@OBJECTIVES.register("l2")
class SquaredL2(Objective):
    """sum ||g - g'||^2 over layers, as in DLG."""

    def __call__(self, sim: Mapping[str, Tensor], obs: Mapping[str, Tensor]) -> Tensor:
        return sum(w * (s - o).pow(2).sum() for s, o, w in self.pairs(sim, obs))  # type: ignore[return-value]
