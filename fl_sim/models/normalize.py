"""Input normalization that lives inside the model.

Models take images in [0, 1]; attacks optimise in that space, so the
normalization must be part of the differentiable forward pass. Mean and std
are non-persistent buffers: they follow ``.to(device)`` but never enter the
state_dict, so they are never transmitted between clients and server.
"""

from collections.abc import Sequence

import torch
from torch import nn

from .errors import ModelError

Stat = float | Sequence[float] | None


def _per_channel(value: Stat, channels: int, default: float, field: str) -> torch.Tensor:
    """Broadcast a scalar or per-channel statistic to shape (1, C, 1, 1)."""
    if value is None:
        values = [default] * channels
    elif isinstance(value, (int, float)):
        values = [float(value)] * channels
    else:
        values = [float(v) for v in value]
        if len(values) == 1:
            values = values * channels
        if len(values) != channels:
            raise ModelError(
                f"{field}: expected 1 or {channels} values (one per input channel), got {len(values)}"
            )
    return torch.tensor(values, dtype=torch.float32).view(1, channels, 1, 1)


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, with stats kept out of the state_dict."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, channels: int, mean: Stat = None, std: Stat = None) -> None:
        super().__init__()
        mean_t = _per_channel(mean, channels, 0.5, "model.mean")
        std_t = _per_channel(std, channels, 0.5, "model.std")
        if not bool((std_t > 0).all()):
            raise ModelError("model.std: every value must be > 0")
        self.register_buffer("mean", mean_t, persistent=False)
        self.register_buffer("std", std_t, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def input_statistics(model: nn.Module, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (1, C, 1, 1) mean and std of the model's first :class:`Normalize` (public: it is part of the
    model, never of the traffic); 0 and 1, the identity, for a model that has none."""
    first = next((m for m in model.modules() if isinstance(m, Normalize)), None)
    if first is None or first.mean.shape[1] != channels:
        return torch.zeros(1, channels, 1, 1), torch.ones(1, channels, 1, 1)
    return first.mean.detach().clone(), first.std.detach().clone()
