"""What the attacker is granted (ThreatModel) and what it holds (AttackInputs).

Components declare the capabilities they rely on; ``check_grants`` compares them with
the threat model before any optimisation runs, so an attack that silently uses knowledge
it was not granted (the paper's main criticism of prior evaluations) cannot happen.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor, nn


class ThreatModelError(ValueError):
    """An attack component needs knowledge the threat model does not grant."""


@dataclass(frozen=True)
class ThreatModel:
    """Knowledge granted to the attacker (the paper's Table 1 assumptions)."""

    labels: Literal["known", "infer", "unknown"] = "unknown"
    bn_stats: Literal["exact", "proxy", "infer", "none"] = "none"
    num_images: int | None = None
    local_steps: int = 1
    local_lr: float | None = None
    local_batch_size: int | None = None
    mixing_keys: bool = False

    def __post_init__(self) -> None:
        checks = {
            "labels": ("known", "infer", "unknown"),
            "bn_stats": ("exact", "proxy", "infer", "none"),
        }
        for name, choices in checks.items():
            if getattr(self, name) not in choices:
                raise ThreatModelError(f"threat_model.{name}: {getattr(self, name)!r} is not one of {', '.join(choices)}")
        if self.local_steps < 1:
            raise ThreatModelError(f"threat_model.local_steps: must be >= 1, got {self.local_steps}")


UpdateKind = Literal["gradient", "delta", "weights"]


@dataclass
class AttackInputs:
    """Everything the attacker holds for one observed client update.

    ``update`` maps parameter (and possibly buffer) names to the observed tensor:
    the gradient (FedSGD), the weight delta new - old, or the new weights (FedAvg).
    ``bn_exact`` is the private batch's per-layer (mean, biased var), in forward order;
    ``bn_proxy`` defaults to the running statistics of the received model.
    """

    model: nn.Module
    update: dict[str, Tensor]
    update_kind: UpdateKind = "gradient"
    image_shape: tuple[int, int, int] = (3, 32, 32)
    num_classes: int = 10
    labels: Tensor | None = None
    bn_exact: list[tuple[Tensor, Tensor]] | None = None
    bn_proxy: list[tuple[Tensor, Tensor]] | None = None
    data_range: tuple[float, float] = (0.0, 1.0)
    # InstaHide's signs flip around this (1, C, 1, 1) centre: priors act on |x - c| (public protocol knowledge).
    sign_center: Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.update_kind not in ("gradient", "delta", "weights"):
            raise ValueError(f"update_kind must be gradient, delta or weights, got {self.update_kind!r}")
        if self.bn_proxy is None:
            from fl_sim.models import bn_layers

            layers = bn_layers(self.model)
            if layers and all(m.running_mean is not None for m in layers):
                self.bn_proxy = [(m.running_mean.detach().clone(), m.running_var.detach().clone()) for m in layers]

    def observed_delta(self) -> dict[str, Tensor]:
        """The update as new - old for every parameter it covers (weights are converted)."""
        if self.update_kind != "weights":
            return self.update
        state = self.model.state_dict()
        return {k: v - state[k] for k, v in self.update.items() if k in state}

    def observed_gradient_like(self) -> dict[str, Tensor]:
        """Something proportional to the gradient, with its sign: -delta for FedAvg updates."""
        if self.update_kind == "gradient":
            return self.update
        return {k: -v for k, v in self.observed_delta().items()}


class Capability(enum.Enum):
    """A piece of knowledge a component relies on; each knows how it is granted."""

    KNOWN_LABELS = "known_labels"
    BN_EXACT = "bn_exact"
    BN_PROXY = "bn_proxy"
    NUM_IMAGES = "num_images"
    LOCAL_HYPERPARAMS = "local_hyperparams"
    MIXING_KEYS = "mixing_keys"


# capability -> (is it granted?, the grant to ask for, is the data present?, the input to supply)
_GRANTS: dict[Capability, tuple[Callable[[ThreatModel], bool], str, Callable[[AttackInputs], bool], str]] = {
    Capability.KNOWN_LABELS: (lambda t: t.labels == "known", "threat_model.labels='known'", lambda i: i.labels is not None, "inputs.labels"),
    Capability.BN_EXACT: (lambda t: t.bn_stats == "exact", "threat_model.bn_stats='exact'", lambda i: i.bn_exact is not None, "inputs.bn_exact"),
    Capability.BN_PROXY: (lambda t: t.bn_stats in ("exact", "proxy"), "threat_model.bn_stats='proxy'", lambda i: i.bn_proxy is not None, "inputs.bn_proxy (a model with BatchNorm running stats)"),
    Capability.NUM_IMAGES: (lambda t: t.num_images is not None, "threat_model.num_images", lambda i: True, ""),
    Capability.LOCAL_HYPERPARAMS: (lambda t: t.local_lr is not None and t.local_batch_size is not None, "threat_model.local_lr and local_batch_size", lambda i: True, ""),
    Capability.MIXING_KEYS: (lambda t: t.mixing_keys, "threat_model.mixing_keys=True", lambda i: "mixing_keys" in i.extra, "inputs.extra['mixing_keys']"),
}


class Component:
    """Base of every attack part: a name, a kind and the capabilities it needs."""

    name: str = "?"
    kind: str = "component"
    requires: frozenset[Capability] = frozenset()

    def requirements(self) -> set[Capability]:
        """Capabilities needed with the current options (may depend on them)."""
        return set(self.requires)

    def describe(self) -> str:
        return f"{self.kind} {self.name!r}"

    def config(self) -> dict[str, Any]:
        return {"name": self.name, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}


def check_grants(components: Iterable[Component], threat_model: ThreatModel, inputs: AttackInputs | None = None) -> None:
    """Raise ThreatModelError, one line, listing every missing grant or input."""
    problems: list[str] = []
    for comp in components:
        for cap in sorted(comp.requirements(), key=lambda c: c.value):
            granted, grant, present, need = _GRANTS[cap]
            if not granted(threat_model):
                problems.append(f"{comp.describe()} needs {grant}")
            elif inputs is not None and not present(inputs):
                problems.append(f"{comp.describe()} needs {need}")
    if problems:
        raise ThreatModelError("; ".join(dict.fromkeys(problems)))


def last_linear_name(model: nn.Module) -> str:
    """Name of the last nn.Linear (the classifier), whose gradient leaks the labels."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError("model has no nn.Linear layer")
    return names[-1]


__all__ = [
    "AttackInputs",
    "Capability",
    "Component",
    "ThreatModel",
    "ThreatModelError",
    "check_grants",
    "last_linear_name",
]
