"""Per-image PSNR and SSIM with fixed, documented parameters.

SSIM values differ between libraries (window shape and size, covariance estimator), so a
single implementation is pinned: ``skimage.metrics.structural_similarity`` with the
Wang et al. (2004) settings (Gaussian window sigma=1.5, population covariance, K1=0.01,
K2=0.03, data_range=1.0). Inputs are images in [0, 1], shape (N, C, H, W).
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import structural_similarity
from torch import Tensor

# Wang et al. 2004: 11-tap Gaussian window, sigma 1.5 (skimage truncates at 3.5 sigma).
SSIM_SIGMA = 1.5
SSIM_WIN_SIZE = 11


def _check_pair(x: Tensor, y: Tensor) -> None:
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"expected two (N, C, H, W) batches of equal shape, got {tuple(x.shape)} and {tuple(y.shape)}")


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Per-image PSNR in dB (Tensor[N], float64); identical images give +inf."""
    _check_pair(x, y)
    diff = x.detach().double() - y.detach().double().to(x.device)
    mse = diff.pow(2).flatten(1).mean(dim=1)
    return (10.0 * torch.log10(data_range**2 / mse)).cpu()


def _win_size(height: int, width: int) -> int:
    """11 as in Wang et al.; for smaller images the largest odd size that fits.

    With gaussian_weights=True skimage keeps the sigma=1.5 Gaussian filter either way; the
    window size only sets how much border is cropped before averaging.
    """
    side = min(SSIM_WIN_SIZE, height, width)
    return side if side % 2 == 1 else side - 1


def ssim(x: Tensor, y: Tensor) -> Tensor:
    """Per-image SSIM (Tensor[N], float64) of images in [0, 1], Wang et al. 2004 settings."""
    _check_pair(x, y)
    a = x.detach().double().cpu().numpy()
    b = y.detach().double().cpu().numpy()
    win = _win_size(a.shape[2], a.shape[3])
    if win < 3:
        raise ValueError(f"images of size {a.shape[2]}x{a.shape[3]} are too small for SSIM")
    values = [
        structural_similarity(
            a_i,
            b_i,
            win_size=win,
            gaussian_weights=True,
            sigma=SSIM_SIGMA,
            use_sample_covariance=False,
            data_range=1.0,
            channel_axis=0,
        )
        for a_i, b_i in zip(a, b)
    ]
    return torch.tensor(np.asarray(values, dtype=np.float64))
