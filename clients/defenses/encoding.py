"""What the protocol makes public about a deployment's batch encoder, for its deployment card.

Which encoder clients run (MixUp, InstaHide) is part of the protocol, and so is the
centre InstaHide's signs flip around (the dataset mean, read off the model's
Normalize layer, or 0.5 or 0): an attacker works on ``|x - c|``. The keys (partners,
coefficients, signs) never are.
"""

from __future__ import annotations

from torch import nn

from clients.defenses.instahide import sign_center
from fl_sim.config import RunConfig

ENCODERS = ("mixup", "instahide")


def public_encoding(config: RunConfig, model: nn.Module, channels: int) -> tuple[str | None, tuple[float, ...] | None]:
    """(encoder name, InstaHide's per-channel sign centre) of the configured defenses."""
    encoders = [d for d in config.defenses if d.name in ENCODERS]
    if not encoders:
        return None, None
    params = encoders[0]
    if params.name != "instahide":
        return params.name, None
    center = sign_center(params.center, model, channels).expand(1, channels, 1, 1)
    return "instahide", tuple(float(v) for v in center.flatten())
