"""GradPrune (Zhu et al. 2019; Huang et al. 2021 Section 4): zero the smallest-magnitude entries.

Definition used here, per tensor (``scope="layer"``, the paper's) or over all
tensors of the update together (``scope="global"``): with ``n`` entries, exactly
the ``m = ceil(p * n)`` entries of smallest magnitude are set to zero (``p * n``
is rounded to 6 decimals first, so binary float error such as
``0.7 * 10 = 7.000000000000001`` does not add one). Ties are broken by
``torch.topk``; every other entry keeps its value. So the pruned fraction is at
least ``p`` and less than ``p + 1/n``; a tensor that already held more zeros keeps
them. Non-floating tensors pass through.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from clients.defenses.base import BuildContext, Defense
from clients.defenses.registry import register_defense
from fl_sim.config import DefenseParams


class GradPruneParams(DefenseParams):
    name: Literal["gradprune"] = "gradprune"
    p: float = Field(..., gt=0, lt=1, description="fraction of entries zeroed (paper: 0.5 ... 0.999)")
    scope: Literal["layer", "global"] = "layer"


def num_pruned(p: float, n: int) -> int:
    """How many of ``n`` entries a pruning ratio ``p`` zeroes: ``ceil(p * n)`` (see module doc)."""
    return min(n, math.ceil(round(p * n, 6)))


def prune_flat(flat: Tensor, p: float) -> Tensor:
    """``flat`` (1-D) with its ``num_pruned(p, n)`` smallest-magnitude entries zeroed."""
    n = flat.numel()
    keep = n - num_pruned(p, n)
    out = torch.zeros_like(flat)
    if keep > 0:
        idx = torch.topk(flat.abs(), keep, sorted=False).indices
        out[idx] = flat[idx]
    return out


def prune(update: dict[str, Tensor], p: float, scope: str = "layer") -> dict[str, Tensor]:
    floats = [k for k, v in update.items() if v.is_floating_point() and v.numel() > 0]
    out = dict(update)
    if scope == "layer":
        for k in floats:
            out[k] = prune_flat(update[k].reshape(-1), p).view_as(update[k])
        return out
    if not floats:
        return out
    flat = prune_flat(torch.cat([update[k].reshape(-1).to(torch.float64) for k in floats]), p)
    pos = 0
    for k in floats:
        n = update[k].numel()
        out[k] = flat[pos : pos + n].view_as(update[k]).to(update[k].dtype)
        pos += n
    return out


@register_defense("gradprune", kind="update", params=GradPruneParams)
class GradPrune(Defense):
    def __init__(self, params: GradPruneParams, context: BuildContext | None = None) -> None:
        self.p = params.p
        self.scope = params.scope

    def apply(self, update: dict[str, Tensor], rng: torch.Generator) -> dict[str, Tensor]:
        return prune(update, self.p, self.scope)
