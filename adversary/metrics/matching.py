"""Pair reconstructions with the private images before scoring them.

A batch attack returns images in arbitrary order, so per-image scores are only meaningful
after a one-to-one assignment; we use the optimal one (Hungarian, via scipy) on the full
pairwise cost matrix rather than a greedy nearest match, which can use one reconstruction twice.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from adversary.metrics.image_metrics import psnr, ssim
from adversary.metrics.lpips_offline import lpips_distance

_LPIPS_PAIRS_PER_CHUNK = 64


def _check_batches(recon: Tensor, originals: Tensor) -> None:
    if recon.dim() != 4 or originals.dim() != 4 or recon.shape[1:] != originals.shape[1:]:
        raise ValueError(f"expected (N, C, H, W) batches of equal image shape, got {tuple(recon.shape)} and {tuple(originals.shape)}")
    if recon.shape[0] < originals.shape[0]:
        raise ValueError(f"need at least as many reconstructions ({recon.shape[0]}) as originals ({originals.shape[0]})")


def _standardised(images: Tensor) -> Tensor:
    """Each image's pixels at mean 0 and unit norm (a flat image: all zeros, uncorrelated with anything)."""
    flat = images.double().flatten(1)
    flat = flat - flat.mean(1, keepdim=True)
    norm = flat.norm(dim=1, keepdim=True)
    return torch.where(norm > 1e-12, flat / norm.clamp_min(1e-12), torch.zeros_like(flat))


def pairwise_cost(recon: Tensor, originals: Tensor, cost: str = "lpips", net: str = "alex") -> np.ndarray:
    """Cost matrix C[i, j] = cost(recon[i], originals[j]), shape (N, M), float64."""
    recon, originals = recon.detach(), originals.detach().to(recon.device)
    n, m = recon.shape[0], originals.shape[0]
    if cost == "mse":
        a = recon.double().flatten(1)
        b = originals.double().flatten(1)
        return (torch.cdist(a, b).pow(2) / a.shape[1]).cpu().numpy()
    if cost == "correlation":  # 1 - Pearson correlation of the pixels: blind to brightness and contrast
        a, b = (_standardised(t) for t in (recon, originals))
        return (1 - a @ b.T).cpu().numpy()
    if cost != "lpips":
        raise ValueError(f"cost must be 'lpips', 'mse' or 'correlation', got {cost!r}")
    rows = torch.arange(n, device=recon.device).repeat_interleave(m)
    cols = torch.arange(m, device=recon.device).repeat(n)
    values = []
    with torch.no_grad():
        for start in range(0, n * m, _LPIPS_PAIRS_PER_CHUNK):
            r = rows[start : start + _LPIPS_PAIRS_PER_CHUNK]
            c = cols[start : start + _LPIPS_PAIRS_PER_CHUNK]
            values.append(lpips_distance(recon[r], originals[c], net=net).double().cpu())
    return torch.cat(values).reshape(n, m).numpy()


def _assign(costs: np.ndarray) -> np.ndarray:
    """perm with recon[perm[i]] matched to originals[i], minimizing the total cost."""
    orig_idx, recon_idx = linear_sum_assignment(costs.T)
    perm = np.empty(costs.shape[1], dtype=np.int64)
    perm[orig_idx] = recon_idx
    return perm


def match_reconstructions(recon: Tensor, originals: Tensor, cost: str = "lpips", net: str = "alex") -> np.ndarray:
    """Optimal one-to-one matching; returns perm (length M) with recon[perm[i]] ~ originals[i].

    Needs N >= M reconstructions; unmatched extra reconstructions are ignored.
    """
    _check_batches(recon, originals)
    return _assign(pairwise_cost(recon, originals, cost=cost, net=net))


def _summary(name: str, values: np.ndarray, best: str) -> dict[str, float]:
    with np.errstate(invalid="ignore"):  # PSNR of a perfect match is inf; its std is then nan
        return {
            f"{name}_avg": float(np.mean(values)),
            f"{name}_best": float(np.min(values) if best == "min" else np.max(values)),
            f"{name}_std": float(np.std(values)),  # population std (ddof=0) over images
        }


def evaluate_reconstruction(recon: Tensor, originals: Tensor, net: str = "alex", match: str = "lpips") -> dict[str, Any]:
    """Match one-to-one (by LPIPS, as in the paper's tables, or by MSE), then score each matched pair.

    Returns per-image lists "lpips", "psnr", "ssim" (in the order of ``originals``), "perm",
    and summaries "<metric>_avg", "<metric>_best" (min for LPIPS, max for PSNR/SSIM),
    "<metric>_std". Images must be in [0, 1] (never dataset-normalized).
    """
    _check_batches(recon, originals)
    if match == "lpips":
        costs = pairwise_cost(recon, originals, cost="lpips", net=net)
        perm = _assign(costs)
        lpips_vals = costs[perm, np.arange(len(perm))]
    else:
        perm = _assign(pairwise_cost(recon, originals, cost=match, net=net))
        lpips_vals = None
    matched = recon.detach()[torch.as_tensor(perm, device=recon.device)]
    if lpips_vals is None:
        lpips_vals = lpips_distance(matched, originals, net=net).double().cpu().numpy()
    psnr_vals = psnr(matched, originals).numpy()
    ssim_vals = ssim(matched, originals).numpy()
    result: dict[str, Any] = {
        "perm": perm.tolist(),
        "lpips": lpips_vals.tolist(),
        "psnr": psnr_vals.tolist(),
        "ssim": ssim_vals.tolist(),
    }
    result.update(_summary("lpips", lpips_vals, "min"))
    result.update(_summary("psnr", psnr_vals, "max"))
    result.update(_summary("ssim", ssim_vals, "max"))
    return result
