"""Optimisation-based gradient inversion as attack methods: one per preset of :mod:`adversary.attacks.presets`."""

from __future__ import annotations

import functools
from typing import Any

from adversary.attacks import PRESETS, AttackInputs, build_attack, preset_config
from adversary.methods.base import METHODS, AttackMethod, Progress, Reconstruction
from adversary.observation import Observation
from fl_sim.threat import Capability, ThreatModel


class OptimizationAttack(AttackMethod):
    """A preset's objective, regularizers, optimizer, label and BN strategies, with the job's overrides."""

    match = "lpips"
    accelerated = True

    def __init__(self, preset: str, overrides: dict[str, Any] | None = None) -> None:
        self.preset = preset
        self.overrides = dict(overrides or {})
        self.resolved = preset_config(preset, self.overrides)
        self.attack = build_attack(preset, self.overrides)
        self.name = preset

    def requirements(self) -> set[Capability]:
        return set().union(*(c.requirements() for c in self.attack.components()))

    @property
    def total_iterations(self) -> int:
        groups = 1 if getattr(self.attack.optimizer, "independent_trials", True) else self.attack.restarts
        return self.attack.iterations * groups

    def check(self, inputs: AttackInputs, threat_model: ThreatModel) -> None:
        self.attack.check(inputs, threat_model)  # the parts' grants, and the client simulation's

    def run(self, obs: Observation, inputs: AttackInputs, threat_model: ThreatModel,
            progress: Progress | None = None) -> Reconstruction:
        result = self.attack.run(inputs, threat_model, callback=progress)
        return Reconstruction(images=result.images, labels=result.labels, loss_curve=result.loss_curve,
                              info={"objective": result.objective, "trial_losses": result.trial_losses,
                                    "timing": result.timing})


for _name in PRESETS:
    METHODS.add(_name, functools.partial(OptimizationAttack, _name))
