"""Conversions between stored pixels and the float (N, C, H, W) tensors in [0, 1] used everywhere."""

from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF


def to_float_images(pixels: np.ndarray, *, channels_last: bool) -> torch.Tensor:
    """uint8 pixels, (N, H, W), (N, H, W, C) or (N, C, H, W), to float32 (N, C, H, W) in [0, 1]."""
    if pixels.ndim == 3:
        pixels = pixels[:, None, :, :]
    elif channels_last:
        pixels = pixels.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(pixels)).to(torch.float32).div_(255.0)


def resize_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bilinear resize to size x size; a no-op when the images already have that size.

    Antialiasing matters when shrinking (e.g. 512 -> 224 ImageNet samples): without it the
    result aliases and differs from what PIL-based pipelines produce.
    """
    if tuple(x.shape[-2:]) == (size, size):
        return x
    out = TF.resize(x, [size, size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return out.clamp_(0.0, 1.0)
