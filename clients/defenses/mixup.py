"""MixUp (Zhang et al. 2018) as the paper uses it: k-image mixing with a bounded coefficient.

Each private image of the batch is mixed with ``k - 1`` other images drawn
uniformly without replacement from the client's own partition (never itself):
``x~ = sum_j lambda_j s_j`` with ``s_1 = x``. The coefficients are drawn uniformly
on the simplex (Dirichlet(1, ..., 1)) and redrawn until none exceeds ``max_coeff``
(0.65 in the paper; rejection sampling). Labels are mixed with the same
coefficients. Keys (ground-truth sidecar only):

- ``keys/partners`` (N, k) int64: column 0 the image's own dataset index, then its
  partners' (private dataset indices; public ones for Inter-InstaHide);
- ``keys/coeffs`` (N, k) float32: ``lambda_j`` for those columns.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import Tensor

from clients.defenses.base import BuildContext, Defense, EncodeContext
from clients.defenses.registry import register_defense
from fl_sim.config import DefenseParams


class MixParams(DefenseParams):
    k: int = Field(4, ge=2, le=64, description="images per mix (paper: 4 or 6)")
    max_coeff: float = Field(0.65, gt=0, le=1, description="upper bound of one coefficient")

    @model_validator(mode="after")
    def _feasible(self):
        if self.k * self.max_coeff < 1:
            raise ValueError(f"max_coeff: must be >= 1/k = {1 / self.k:.4g} so coefficients can sum to 1, got {self.max_coeff}")
        return self


class MixUpParams(MixParams):
    name: Literal["mixup"] = "mixup"


def sample_coefficients(n: int, k: int, max_coeff: float, rng: torch.Generator) -> Tensor:
    """(n, k) float64 rows uniform on the simplex, conditioned on max <= max_coeff (rejection)."""
    rows: list[Tensor] = []
    have = 0
    while have < n:
        draw = max(2 * (n - have), 16)
        e = -torch.log1p(-torch.rand(draw, k, generator=rng, dtype=torch.float64))  # Exp(1)
        lam = e / e.sum(1, keepdim=True)
        ok = lam[lam.max(1).values <= max_coeff]
        rows.append(ok)
        have += len(ok)
    return torch.cat(rows)[:n]


def sample_partners(indices: np.ndarray, pool: np.ndarray, count: int, rng: torch.Generator, *, exclude_self: bool) -> np.ndarray:
    """(N, count) indices from ``pool``, distinct per row, excluding the row's own index if asked."""
    pool_t = torch.as_tensor(np.asarray(pool, dtype=np.int64))
    weights = torch.ones(len(indices), len(pool_t), dtype=torch.float64)
    if exclude_self:
        weights[torch.as_tensor(np.asarray(indices, dtype=np.int64))[:, None] == pool_t[None, :]] = 0
    available = int((weights > 0).sum(1).min()) if len(indices) else 0
    if available < count:
        raise ValueError(f"need {count} mixing partners per image but the pool offers only {available}")
    choice = torch.multinomial(weights, count, replacement=False, generator=rng)
    return pool_t[choice].numpy()


def mix(images: Tensor, coeffs: Tensor) -> Tensor:
    """``sum_j coeffs[:, j] * images[:, j]`` for images (N, k, C, H, W), in float32."""
    c = coeffs.to(images.dtype).view(*coeffs.shape, *([1] * (images.dim() - 2)))
    return (c * images).sum(1)


@register_defense("mixup", kind="encoder", params=MixUpParams)
class MixUp(Defense):
    def __init__(self, params: MixParams, context: BuildContext | None = None) -> None:
        self.k = params.k
        self.max_coeff = params.max_coeff

    def encode(self, x: Tensor, y_onehot: Tensor, rng: torch.Generator, context: EncodeContext):
        n = len(x)
        partners = sample_partners(context.indices, context.pool, self.k - 1, rng, exclude_self=True)
        coeffs = sample_coefficients(n, self.k, self.max_coeff, rng).to(torch.float32)
        idx = torch.as_tensor(partners)
        images = torch.cat([x[:, None], context.train_x[idx]], dim=1)
        labels = torch.cat([y_onehot[:, None], torch.nn.functional.one_hot(context.train_y[idx], y_onehot.shape[1]).float()], dim=1)
        keys = {
            "keys/partners": np.concatenate([np.asarray(context.indices, np.int64)[:, None], partners], axis=1),
            "keys/coeffs": coeffs.numpy(),
        }
        return mix(images, coeffs), mix(labels, coeffs), keys
