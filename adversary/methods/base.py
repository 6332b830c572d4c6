"""What an attack method is, and the registry that names them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor

from adversary.attacks.registry import component_registry
from adversary.attacks.threat_model import AttackInputs, Component, check_grants
from adversary.observation import Observation
from fl_sim.threat import ThreatModel

Progress = Callable[[int, float], None]

METHODS = component_registry("attack")


@dataclass
class Reconstruction:
    """What a method recovered: images in [0, 1] and what it knows about them."""

    images: Tensor  # (K, C, H, W); K may differ from the number of private images
    labels: Tensor | None = None
    loss_curve: list[float] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # e.g. objective, trial losses, timing, candidates
    target_class: int | None = None  # only this class's private images were attacked (fishing)

    def cpu(self) -> Reconstruction:
        """Moved to the CPU, where it is scored and written."""
        labels = self.labels.cpu() if self.labels is not None else None
        return Reconstruction(self.images.detach().cpu(), labels, self.loss_curve, self.info, self.target_class)


class AttackMethod(Component):
    """One way to recover private images from an observed update."""

    kind = "attack"
    # Reconstructions are matched one-to-one to the originals by this cost before any metric.
    match: Literal["lpips", "mse"] = "lpips"
    # Score against each private image once, however many local steps saw it (else every step's batch).
    distinct_images: bool = False
    # Runs on the job's device (its inputs moved there by ``AttackInputs.to``); else on the CPU, where
    # the inputs are built (closed-form recoveries gain nothing from a GPU).
    accelerated: bool = False

    @property
    def total_iterations(self) -> int | None:
        """How many progress steps ``run`` reports (None: it reports none, or cannot say)."""
        return None

    def check(self, inputs: AttackInputs, threat_model: ThreatModel) -> None:
        """Refuse (ThreatModelError, one line) before anything runs when a grant or an input is missing."""
        check_grants([self], threat_model, inputs)

    def run(self, obs: Observation, inputs: AttackInputs, threat_model: ThreatModel,
            progress: Progress | None = None) -> Reconstruction:
        raise NotImplementedError


def build_method(name: str, *, preset: str | None = None, overrides: dict[str, Any] | None = None) -> AttackMethod:
    """The method ``name``; ``preset``/``overrides`` configure optimisation (a recovery that falls back to
    optimising, fishing, uses the role's preset)."""
    factory = METHODS.lookup(name)
    accepted = METHODS.options(name)
    kwargs = {"overrides": overrides or {}}
    if "preset" in accepted:
        kwargs["preset"] = preset or "inverting-gradients"
    return factory(**kwargs)
