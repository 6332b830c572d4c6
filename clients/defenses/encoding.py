"""What the protocol makes public about a deployment's batch encoder, for its deployment card.

Which encoder clients run (MixUp, InstaHide) is part of the protocol, and so is the
centre InstaHide's signs flip around (the dataset mean, read off the model's
Normalize layer, or 0.5 or 0): an attacker works on ``|x - c|``. The keys (partners,
coefficients, signs) never are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from clients.defenses.instahide import sign_center
from fl_sim.config import RunConfig

ENCODERS = ("mixup", "instahide")


@dataclass(frozen=True)
class PublicEncoding:
    """What the protocol says of its batch encoder: its name, the images per mix (``k``), their largest
    coefficient, InstaHide's variant (intra: partners from the client's own data; inter: from a public
    set) and the per-channel centre its signs flip around. The keys are never part of it."""

    name: str | None = None
    k: int | None = None
    max_coeff: float | None = None
    variant: str | None = None
    sign_center: tuple[float, ...] | None = None

    def card_fields(self) -> dict[str, Any]:
        return {"encoder": self.name, "encoder_k": self.k, "encoder_max_coeff": self.max_coeff,
                "encoder_variant": self.variant, "sign_center": self.sign_center}


def public_encoding(config: RunConfig, model: nn.Module, channels: int) -> PublicEncoding:
    """The public side of the configured batch encoder (empty without one)."""
    encoders = [d for d in config.defenses if d.name in ENCODERS]
    if not encoders:
        return PublicEncoding()
    params = encoders[0]
    mixing = {"name": params.name, "k": int(params.k), "max_coeff": float(params.max_coeff)}
    if params.name != "instahide":
        return PublicEncoding(**mixing)
    center = sign_center(params.center, model, channels).expand(1, channels, 1, 1)
    return PublicEncoding(**mixing, variant=params.variant, sign_center=tuple(float(v) for v in center.flatten()))
