"""What a malicious server recovers from the replies to the model it sent (or, under secure
aggregation, from the round's unmasked mean update, which the server computes anyway).

- ``trap-weights`` / ``imprint``: analytic, ``dW_i / db_i`` per unit or per bin
  (a one-step update ``-lr * g`` or a FedAvg delta works too: the ratio cancels the
  scale; over several local steps the weights drift, so it is approximate).
- ``fishing``: the fished classifier leaves (almost) only the target class's
  images in the gradient below it. The server counts them from the target's bias
  gradient (``db_t = -m / B``, the other images' probability of the target is ~0),
  then runs the optimization attack (the role's preset) for ``m`` images of that
  label on the gradient of the feature extractor (the classifier's rows of other
  classes carry every image and are left out); a single fished image on a first
  fully connected layer is read off analytically. FedAvg deltas are treated as
  ``-lr x`` the summed gradients of the local steps, an approximation.

Each needs server control (:class:`fl_sim.threat.Capability`): weights for trap
weights and fishing, the architecture and public data for the imprint. Candidates are
matched to the private images by MSE, and each private image counts once however
many local steps saw it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from adversary.attacks import AttackInputs, ThreatModel, build_attack, recover_single_image
from adversary.attacks.analytic import first_linear
from adversary.malicious.fishing import last_linear
from adversary.malicious.imprint import recover_from_imprint
from adversary.malicious.server import IMPRINT_BLOCK
from adversary.malicious.trap_weights import recover_from_trap
from adversary.methods.base import METHODS, AttackMethod, Progress, Reconstruction
from adversary.observation import Observation
from fl_sim.models import bn_layers
from fl_sim.threat import Capability


class Recovery(AttackMethod):
    """A malicious server's recovery: nothing to recover from a client that refused the round."""

    match = "mse"
    distinct_images = True

    def __init__(self, overrides: dict[str, Any] | None = None) -> None:
        self.overrides = dict(overrides or {})

    def run(self, obs: Observation, inputs: AttackInputs, threat_model: ThreatModel,
            progress: Progress | None = None) -> Reconstruction:
        if obs.refused:
            return Reconstruction(torch.empty(0, *obs.image_shape), info={"note": "the client refused the round (vetting): nothing sent"})
        return self.recover(obs, inputs.gradient_estimate(float(threat_model.local_lr or 1.0)), threat_model)

    def recover(self, obs: Observation, gradient: dict[str, Tensor], threat_model: ThreatModel) -> Reconstruction:
        raise NotImplementedError


@METHODS.register("trap-weights")
class TrapWeightsRecovery(Recovery):
    """Boenisch et al. 2023: one image per trapped unit of the first Linear layer."""

    requires = frozenset({Capability.WEIGHTS_CONTROL})

    def recover(self, obs, gradient, threat_model):
        rec = recover_from_trap(gradient, obs.model, obs.image_shape)
        return Reconstruction(rec.images.clamp(0, 1), info={"candidates": len(rec.images), "confirmed": int(rec.confirmed.sum())})


@METHODS.register("imprint")
class ImprintRecovery(Recovery):
    """Fowl et al. 2022: consecutive-bin gradient differences of the inserted block isolate single images."""

    requires = frozenset({Capability.ARCHITECTURE_CONTROL, Capability.PUBLIC_DATA})

    def recover(self, obs, gradient, threat_model):
        block = getattr(obs.model, IMPRINT_BLOCK)
        images = recover_from_imprint(gradient, block, prefix=f"{IMPRINT_BLOCK}.")
        return Reconstruction(images, info={"candidates": len(images), "bins": block.hidden})


def fished_count(obs: Observation, gradient: dict[str, Tensor], target: int, batch_size: int) -> int:
    """Target-class images behind the update, from the fished bias gradient: db_t = -m / B."""
    name, _ = last_linear(obs.model)
    db = float(gradient[f"{name}.bias"][target])
    return max(0, int(round(-db * batch_size)))


@METHODS.register("fishing")
class FishingRecovery(Recovery):
    """Wen et al. 2022: the images of the fished class, analytically for one image, else by optimisation."""

    requires = frozenset({Capability.WEIGHTS_CONTROL})

    def __init__(self, preset: str = "inverting-gradients", overrides: dict[str, Any] | None = None) -> None:
        super().__init__(overrides)
        self.preset = preset

    def recover(self, obs, gradient, threat_model):
        target = int(obs.info["target_class"])
        m = fished_count(obs, gradient, target, int(threat_model.local_batch_size or 1))
        info: dict[str, Any] = {"target_class": target, "target_images": m}
        if m == 0:
            return Reconstruction(torch.empty(0, *obs.image_shape), info={**info, "note": "no image of the fished class in the update"},
                                  target_class=target)
        classifier, _ = last_linear(obs.model)
        features = {k: v.float() for k, v in gradient.items() if not k.startswith(f"{classifier}.")}
        method = obs.info.get("recovery", "auto")
        if method in ("auto", "analytic") and (m == 1 or method == "analytic"):
            analytic = _analytic_single(obs, features)
            if analytic is not None:
                return Reconstruction(analytic, info={**info, "method": "analytic"}, target_class=target)
        overrides = dict(self.overrides)
        if bn_layers(obs.model):  # the clients' BatchNorm state is theirs (FedBN): no BN prior
            overrides.setdefault("bn", {"name": "none"})
            overrides.setdefault("regularizers", {}).setdefault("bn_prior", None)
        inputs = AttackInputs(obs.model, features, update_kind="gradient", image_shape=obs.image_shape,
                              num_classes=obs.num_classes, labels=torch.full((m,), target, dtype=torch.long))
        result = build_attack(self.preset, overrides).run(inputs, ThreatModel(labels="known", bn_stats="none", num_images=m))
        return Reconstruction(result.images.detach().clamp(0, 1), info={**info, "method": "optimize", "preset": self.preset,
                                                                        "objective": result.objective}, target_class=target)


def _analytic_single(obs: Observation, features: dict[str, Tensor]) -> Tensor | None:
    """The one fished image from a first fully connected layer (None where the model has none)."""
    try:
        first_linear(obs.model)
    except ValueError:
        return None
    inputs = AttackInputs(obs.model, features, update_kind="gradient", image_shape=obs.image_shape,
                          num_classes=obs.num_classes)
    return recover_single_image(inputs).clamp(0, 1)
