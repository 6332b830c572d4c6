"""Factory for the normalization layer choice shared by conv models.

GroupNorm is the federated-friendly alternative to BatchNorm (no running
statistics, no batch dependence); "none" gives an identity.
"""

import math
from collections.abc import Callable

from torch import nn


def group_count(channels: int, max_groups: int = 32) -> int:
    """Largest group count <= ``max_groups`` that divides ``channels``."""
    return math.gcd(max_groups, channels)


_FACTORIES: dict[str, Callable[[int], nn.Module]] = {
    "batch": nn.BatchNorm2d,
    "group": lambda c: nn.GroupNorm(group_count(c), c),
    "none": lambda c: nn.Identity(),
}


def make_norm(norm: str, channels: int) -> nn.Module:
    """Return the 2d normalization layer named by ``norm``."""
    return _FACTORIES[norm](channels)
