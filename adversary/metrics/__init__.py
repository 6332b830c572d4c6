"""Reconstruction-quality metrics: LPIPS (offline ImageNet backbones), PSNR, SSIM, matching."""

from adversary.metrics.image_metrics import psnr, ssim
from adversary.metrics.lpips_offline import load_lpips, lpips_distance
from adversary.metrics.matching import evaluate_reconstruction, match_reconstructions, pairwise_cost
from adversary.metrics.safe_pickle import NumpyOnlyUnpickler, load_numpy_pickle

__all__ = [
    "NumpyOnlyUnpickler",
    "evaluate_reconstruction",
    "load_lpips",
    "load_numpy_pickle",
    "lpips_distance",
    "match_reconstructions",
    "pairwise_cost",
    "psnr",
    "ssim",
]
