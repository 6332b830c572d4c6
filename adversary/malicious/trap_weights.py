"""Trap weights (Boenisch et al. 2023, "When the Curious Abandon Honesty").

Weights-only manipulation of a first ``nn.Linear`` layer with bias (right after the model's
Normalize/Flatten). Each row gets random weights, half of them (random positions) negative,
and the negative half scaled by ``scale`` > 1: for natural (positive, spatially correlated)
images the pre-activation is then negative for most images, so each ReLU unit fires for only
a small fraction of a batch. A unit that fires for exactly ONE image n has

    dL/dW_i = dL/db_i * x'_n   =>   x'_n = dL/dW_i / dL/db_i       (x' = normalized input)

so the image is recovered exactly (up to float error). Units firing for several images give
mixtures; units firing for one image give identical rows, so identical candidates from two or
more units are "confirmed" single images. The bias is set to cancel Normalize's shift so the
trap acts on pixel values in [0, 1] (all positive), as in the paper.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from adversary.attacks.analytic import first_linear


def first_linear_layer(model: nn.Module) -> tuple[str, nn.Linear, nn.Module | None]:
    """(name, layer, normalize) of the first Linear; it may follow only Normalize/Flatten."""
    return first_linear(model, purpose="trap weights")


def _norm_stats(normalize: nn.Module | None, shape: tuple[int, ...], like: Tensor) -> tuple[Tensor, Tensor]:
    """Flattened per-input mean and std (zeros/ones without a Normalize)."""
    if normalize is None:
        return torch.zeros(shape, dtype=like.dtype).flatten(), torch.ones(shape, dtype=like.dtype).flatten()
    mean = normalize.mean.to(like).expand(1, *shape).flatten()
    std = normalize.std.to(like).expand(1, *shape).flatten()
    return mean, std


@torch.no_grad()
def trap_weights_(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    *,
    scale: float = 1.05,
    sigma: float = 0.01,
    seed: int = 0,
) -> nn.Module:
    """Overwrite the first Linear layer of ``model`` in place with trap weights; returns model.

    ``scale`` > 1 multiplies the negative half of every row; larger values make units fire
    for fewer images (tune with the batch size: ~1.05-1.15 for batches of 16-64 CIFAR images).
    """
    _, layer, normalize = first_linear_layer(model)
    out_f, in_f = layer.weight.shape
    gen = torch.Generator().manual_seed(seed)
    mag = torch.randn(out_f, in_f, generator=gen).abs() * sigma
    # exactly half of each row's entries negative, at random positions
    order = torch.rand(out_f, in_f, generator=gen).argsort(dim=1)
    neg = torch.zeros(out_f, in_f, dtype=torch.bool)
    neg.scatter_(1, order[:, : in_f // 2], True)
    w = torch.where(neg, -scale * mag, mag)
    mean, std = _norm_stats(normalize, input_shape, w)
    if mean.numel() != in_f:
        raise ValueError(f"input_shape {input_shape} does not match the first layer's {in_f} inputs")
    # layer sees x' = (x - mean)/std; W' = W*std makes W' x' + b = W x when b = W mean
    w_layer = w * std
    layer.weight.copy_(w_layer.to(layer.weight))
    layer.bias.copy_((w @ mean).to(layer.bias))
    return model


@dataclass
class TrapRecovery:
    """Distinct candidate images from the trapped layer, most-supported first."""

    images: Tensor  # (K, C, H, W) in image space
    counts: Tensor  # how many units produced each candidate
    confirmed: Tensor  # bool: produced by >= 2 units (identical rows => a single image)

    @property
    def exact(self) -> Tensor:
        """Candidates produced by >= 2 units (heuristic for single images; may still hold
        near-duplicates of one image or rare coinciding mixtures)."""
        return self.images[self.confirmed]


def layer_grads(grads: Mapping[str, Tensor] | tuple[Tensor, Tensor], name: str) -> tuple[Tensor, Tensor]:
    """(dW, db) of the linear layer ``name`` from a name->gradient dict, or the pair itself."""
    if isinstance(grads, Mapping):
        return grads[f"{name}.weight"], grads[f"{name}.bias"]
    dw, db = grads
    return dw, db


@torch.no_grad()
def recover_from_trap(
    grads: Mapping[str, Tensor] | tuple[Tensor, Tensor],
    model: nn.Module,
    input_shape: tuple[int, int, int],
    *,
    rel_eps: float = 1e-6,
    dedup_tol: float = 1e-4,
) -> TrapRecovery:
    """Candidate images x = dW_i / db_i for every unit with db_i != 0, deduplicated.

    ``grads`` maps parameter names (as in ``model.named_parameters()``) to gradients, or is
    ``(dW, db)`` of the trapped layer. A one-step update (-lr * grad) works too: the ratio
    cancels the scale. Candidates closer than ``dedup_tol`` (mean squared error in [0,1]
    image space) are merged.
    """
    name, _, normalize = first_linear_layer(model)
    dw, db = (g.detach().double().cpu() for g in layer_grads(grads, name))
    keep = db.abs() > rel_eps * db.abs().max().clamp_min(1e-300)
    cand = dw[keep] / db[keep, None]
    mean, std = _norm_stats(normalize, input_shape, cand)
    cand = cand * std + mean  # back to image space
    if cand.shape[0] == 0:
        empty = torch.empty(0, *input_shape)
        return TrapRecovery(empty, torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.bool))
    dist = torch.cdist(cand, cand).pow(2) / cand.shape[1]
    close = dist < dedup_tol
    group = torch.full((cand.shape[0],), -1, dtype=torch.long)
    reps, counts = [], []
    for i in range(cand.shape[0]):
        if group[i] >= 0:
            continue
        members = close[i] & (group < 0)
        group[members] = len(reps)
        reps.append(cand[members].mean(dim=0))
        counts.append(int(members.sum()))
    counts_t = torch.tensor(counts)
    order = counts_t.argsort(descending=True, stable=True)
    images = torch.stack(reps)[order].float().reshape(-1, *input_shape)
    counts_t = counts_t[order]
    return TrapRecovery(images, counts_t, counts_t >= 2)
