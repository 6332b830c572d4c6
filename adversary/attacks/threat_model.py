"""What the attacker holds (AttackInputs) and the check that it was granted all it uses.

Components declare the capabilities they rely on (:class:`fl_sim.threat.Capability`, one
vocabulary for knowledge and control); ``check_grants`` compares them with the threat
model before any optimisation runs, so an attack that silently uses knowledge it was not
granted (the paper's main criticism of prior evaluations) cannot happen.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from fl_sim.deployment import ClientRecipe
from fl_sim.models import bn_layers
from fl_sim.threat import Capability, ThreatModel, ThreatModelError
from fl_sim.wire import UpdateKind


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
    # How the client trains locally (optimiser, batching), as the attacker models it; None: plain SGD.
    recipe: ClientRecipe | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.update_kind not in ("gradient", "delta", "weights"):
            raise ValueError(f"update_kind must be gradient, delta or weights, got {self.update_kind!r}")
        if self.bn_proxy is None:
            layers = bn_layers(self.model)
            if layers and all(m.running_mean is not None for m in layers):
                self.bn_proxy = [(m.running_mean.detach().clone(), m.running_var.detach().clone()) for m in layers]

    def to(self, device: torch.device | str) -> AttackInputs:
        """These inputs on ``device``: a copy of the model and every tensor moved there (the update, the
        labels, the BatchNorm targets, the sign centre, tensors in ``extra``); itself if already there.
        The received model is never moved in place: the caller's copy stays where it was."""
        device = torch.device(device)
        if _device_of(self.model) == device:
            return self
        return replace(
            self,
            model=copy.deepcopy(self.model).to(device),
            update={k: v.to(device) for k, v in self.update.items()},
            labels=_moved(self.labels, device),
            bn_exact=_moved(self.bn_exact, device),
            bn_proxy=_moved(self.bn_proxy, device),
            sign_center=_moved(self.sign_center, device),
            extra=_moved(self.extra, device),
        )

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

    def gradient_estimate(self, lr: float) -> dict[str, Tensor]:
        """The gradient in float64: as sent (FedSGD), or ``-delta / lr``, the local steps' summed
        gradients (FedAvg; exact for one step)."""
        if self.update_kind == "gradient":
            return {k: v.double() for k, v in self.update.items()}
        if self.update_kind == "delta":
            return {k: -v.double() / lr for k, v in self.update.items()}
        state = self.model.state_dict()
        return {k: -(v.double() - state[k].double()) / lr for k, v in self.update.items() if k in state}


def _device_of(model: nn.Module) -> torch.device:
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def _moved(value: Any, device: torch.device) -> Any:
    """Tensors in nested lists, tuples and dicts moved to ``device``; anything else as it is."""
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _moved(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_moved(v, device) for v in value)
    return value


# capability -> (is the data present?, the input to supply); whether it is granted is the threat model's to say
_INPUTS: dict[Capability, tuple[Callable[[AttackInputs], bool], str]] = {
    Capability.KNOWN_LABELS: (lambda i: i.labels is not None, "inputs.labels"),
    Capability.BN_EXACT: (lambda i: i.bn_exact is not None, "inputs.bn_exact"),
    Capability.BN_PROXY: (lambda i: i.bn_proxy is not None, "inputs.bn_proxy (a model with BatchNorm running stats)"),
    Capability.MIXING_KEYS: (lambda i: "mixing_keys" in i.extra, "inputs.extra['mixing_keys']"),
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


def _missing(what: str, requires: Iterable[Capability], threat_model: ThreatModel, inputs: AttackInputs | None) -> list[str]:
    problems: list[str] = []
    for cap in sorted(requires, key=lambda c: c.value):
        if not threat_model.grants(cap):
            problems.append(f"{what} needs {ThreatModel.grant_for(cap)}")
        elif inputs is not None and cap in _INPUTS and not _INPUTS[cap][0](inputs):
            problems.append(f"{what} needs {_INPUTS[cap][1]}")
    return problems


def check_grants(components: Iterable[Component], threat_model: ThreatModel, inputs: AttackInputs | None = None) -> None:
    """Raise ThreatModelError, one line, listing every missing grant or input."""
    problems = [p for comp in components for p in _missing(comp.describe(), comp.requirements(), threat_model, inputs)]
    if problems:
        raise ThreatModelError("; ".join(dict.fromkeys(problems)))


def check_requirements(what: str, requires: Iterable[Capability], threat_model: ThreatModel) -> None:
    """``check_grants`` for a component class's declared needs, before building it (a server strategy)."""
    problems = _missing(what, requires, threat_model, None)
    if problems:
        raise ThreatModelError("; ".join(problems))


def last_linear_name(model: nn.Module) -> str:
    """Name of the last nn.Linear (the classifier), whose gradient leaks the labels."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError("model has no nn.Linear layer")
    return names[-1]


__all__ = ["AttackInputs", "Component", "check_grants", "check_requirements", "last_linear_name"]
