"""Imprint block (Fowl et al. 2022, "Robbing the Fed"), needs architecture control.

An ``ImprintBlock`` is inserted right after the input. Its first layer has ``k`` units that
all measure the same linear feature, the mean pixel brightness m(x) = <1/d, x>, with biases
-c_j at increasing thresholds c_1 < ... < c_k (quantiles of m estimated from public data):

    h_j = ReLU(m(x) - c_j)         fires iff m(x) > c_j

A second linear layer maps h back to the input shape, with IDENTICAL columns for all units,
and is added to the input (residual): the rest of the model sees x + s(x) * v, a small
image-dependent shift, and dL/dh_j = delta_n is the same for every unit j an image fires.
Hence, summed over the batch (or over clients: secure aggregation sums gradients),

    dW_j - dW_{j+1} = sum_{n: c_j < m_n <= c_{j+1}} delta_n x_n,   db_j - db_{j+1} = sum delta_n

and a bin holding one image gives x_n = (dW_j - dW_{j+1}) / (db_j - db_{j+1}) exactly; the top
bin is dW_k / db_k. With k >> batch size most bins hold at most one image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from adversary.malicious.trap_weights import layer_grads
from fl_sim.models.server_defined import InputResidualBlock


def brightness_thresholds(public_images: Tensor, num_bins: int, *, distribution: str = "normal") -> Tensor:
    """Thresholds c_1..c_k splitting the public brightness distribution into equal-mass bins.

    ``distribution="normal"`` fits a Gaussian to the public images' mean brightness (robust
    with few public images, as in the paper); ``"empirical"`` uses empirical quantiles.
    The lowest threshold is the 0-quantile (every image fires unit 1).
    """
    m = public_images.detach().double().flatten(1).mean(dim=1)
    levels = torch.arange(num_bins, dtype=torch.float64) / num_bins
    if distribution == "empirical":
        c = torch.quantile(m, levels)
        c[0] = -math.inf
    elif distribution == "normal":
        mu, sd = m.mean(), m.std().clamp_min(1e-6)
        c = mu + sd * math.sqrt(2.0) * torch.erfinv(2 * levels - 1)  # levels[0]=0 -> -inf
    else:
        raise ValueError(f"distribution must be 'normal' or 'empirical', got {distribution!r}")
    c[0] = -1.0  # brightness is >= 0: unit 1 fires for every image
    return c.float()


def imprint_weights(input_shape: tuple[int, int, int], thresholds: Tensor, *, gain: float = 1e-3, scale: float = 1.0,
                    seed: int = 0) -> dict[str, Tensor]:
    """``enc.weight``, ``enc.bias``, ``dec.weight`` of an input-residual block that bins images by brightness.

    Unit j computes ``scale * (m(x) - c_j)``; the decoder's columns are ``gain * v``. The
    ratio ``dW_j / db_j = x`` holds for any scale and gain, but they set the magnitudes:
    the gradients grow with ``gain`` (what survives a secure aggregation's quantization),
    the input shift with ``gain * scale`` (how much the rest of the model is disturbed),
    and a local SGD step moves the thresholds by about ``lr * gain / scale`` relative
    (what FedAvg's later local steps see)."""
    d = math.prod(input_shape)
    k = int(thresholds.numel())
    if k < 1 or not bool((thresholds[1:] > thresholds[:-1]).all()):
        raise ValueError("thresholds must be a non-empty increasing sequence")
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(d, generator=gen) * gain
    return {
        "enc.weight": torch.full((k, d), scale / d),
        "enc.bias": -scale * thresholds.float().clone(),
        "dec.weight": v[:, None].expand(d, k).contiguous(),  # identical columns
    }


class ImprintBlock(InputResidualBlock):
    """Linear imprint layer (k bins on mean brightness) + residual map back to the input.

    The same layer shape as the generic block a server may insert
    (:class:`fl_sim.models.server_defined.InputResidualBlock`), with imprint weights."""

    def __init__(self, input_shape: tuple[int, int, int], thresholds: Tensor, *, gain: float = 1e-3, seed: int = 0) -> None:
        weights = imprint_weights(tuple(input_shape), thresholds, gain=gain, seed=seed)
        super().__init__(input_shape, int(thresholds.numel()))
        self.num_bins = self.hidden
        with torch.no_grad():
            for name, value in weights.items():
                self.get_parameter(name).copy_(value)


class ImprintedModel(nn.Module):
    """``body(imprint(x))``: the imprint block placed right after the input of any model."""

    def __init__(self, imprint: ImprintBlock, body: nn.Module) -> None:
        super().__init__()
        self.imprint = imprint
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        return self.body(self.imprint(x))


@torch.no_grad()
def recover_from_imprint(
    grads: Mapping[str, Tensor] | tuple[Tensor, Tensor],
    block: InputResidualBlock,
    *,
    prefix: str = "imprint.",
    rel_eps: float = 1e-6,
    clamp: bool = True,
) -> Tensor:
    """Images (N, C, H, W) in [0, 1], one per non-empty bin (mixtures where bins collide).

    ``grads`` maps parameter names of the ImprintedModel to gradients (or a summed gradient
    over clients, or a one-step update -lr*grad: ratios cancel the scale), or is
    ``(dW, db)`` of ``block.enc``.
    """
    dw, db = (g.detach().double().cpu() for g in layer_grads(grads, f"{prefix}enc"))
    dw_bin = torch.cat([dw[:-1] - dw[1:], dw[-1:]])
    db_bin = torch.cat([db[:-1] - db[1:], db[-1:]])
    keep = db_bin.abs() > rel_eps * db.abs().max().clamp_min(1e-300)
    x = dw_bin[keep] / db_bin[keep, None]
    if clamp:
        x = x.clamp(0.0, 1.0)
    return x.float().reshape(-1, *block.input_shape)
