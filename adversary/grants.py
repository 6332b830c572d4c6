"""Explicit grants: what the threat model allows the attacker beyond the traffic.

The evaluator holds the ground-truth sidecar and hands the attack exactly what
the threat model grants (labels, the private batch's BatchNorm statistics),
nothing else. What the traffic itself reveals (the batch size the client reports,
the local hyperparameters the server sends) is filled in from the observation.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

from adversary.attacks import AttackInputs, ThreatModel, ThreatModelError
from adversary.ground_truth import GroundTruth, PrivateBatch
from adversary.observation import Observation
from fl_sim.models import bn_layers


class GrantError(ValueError):
    """A threat-model choice that cannot be honoured for this observation; one line."""


THREAT_KEYS = tuple(f.name for f in fields(ThreatModel))


def default_threat_model(obs: Observation) -> dict[str, Any]:
    """The paper's strongest attacker, with what the traffic reveals (for an audited
    app, with no ground truth to grant from: labels and BN statistics unknown)."""
    has_bn = bool(bn_layers(obs.model))
    return {
        "labels": "unknown" if obs.foreign else "known",
        "bn_stats": "exact" if has_bn and not obs.foreign else "none",
        "num_images": obs.num_examples,
        "local_steps": obs.local["local_steps"] if obs.update_kind != "gradient" else 1,
        "local_lr": obs.local["lr"],
        "local_batch_size": obs.local["batch_size"],
        "mixing_keys": False,
    }


def threat_model_for(obs: Observation, choices: dict[str, Any] | None = None) -> ThreatModel:
    values = default_threat_model(obs)
    for key, value in (choices or {}).items():
        if key not in THREAT_KEYS:
            raise GrantError(f"threat.{key}: unknown key; choose one of: {', '.join(THREAT_KEYS)}")
        values[key] = value
    try:
        return ThreatModel(**values)
    except ThreatModelError as exc:
        raise GrantError(str(exc)) from None


@dataclass
class Evaluation:
    """The private data behind an observation, for scoring only.

    With a batch encoder (MixUp, InstaHide) the model was trained on ``encoded``
    images with soft ``encoded_labels``: that is what a gradient can reveal.
    """

    images: torch.Tensor
    labels: torch.Tensor
    batch: PrivateBatch
    encoded: torch.Tensor | None = None
    encoded_labels: torch.Tensor | None = None

    @property
    def trained_on(self) -> torch.Tensor:
        return self.encoded if self.encoded is not None else self.images

    @property
    def trained_labels(self) -> torch.Tensor:
        return self.encoded_labels if self.encoded_labels is not None else self.labels


def _cat(batches: list[PrivateBatch], key: str) -> torch.Tensor | None:
    steps = [s for b in batches for s in b.steps]
    if not all(key in s for s in steps):
        return None
    return torch.cat([torch.from_numpy(s[key]) for s in steps])


def private_batch(obs: Observation, truth: GroundTruth) -> Evaluation:
    """The private data behind an update (all contributing clients' for an aggregate)."""
    batches = obs.private_batches(truth)
    if not batches or any(b is None for b in batches):
        raise GrantError(f"MSG_ID: the ground-truth sidecar has no private batch for message {obs.reply.id}")
    return Evaluation(_cat(batches, "images"), _cat(batches, "labels"), batches[0], _cat(batches, "encoded"),
                      _cat(batches, "encoded_labels"))


def _bn_exact(obs: Observation, ev: Evaluation) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if not bn_layers(obs.model):
        return []  # nothing to grant: the model has no BatchNorm layer
    if obs.aggregate_of:
        raise GrantError("threat.bn_stats: 'exact' is undefined for an aggregate of several clients' batches "
                         "(use 'proxy' or 'none')")
    if len(ev.batch.steps) != 1:
        raise GrantError("threat.bn_stats: 'exact' is defined for one local step; this update has "
                         f"{len(ev.batch.steps)} (use 'proxy', 'infer' or 'none')")
    step = ev.batch.steps[0]
    names = [n for n, m in obs.model.named_modules() if m in set(bn_layers(obs.model))]
    try:
        return [(torch.from_numpy(step[f"bn/{n}.mean"]), torch.from_numpy(step[f"bn/{n}.var"])) for n in names]
    except KeyError as exc:
        raise GrantError(f"threat.bn_stats: the sidecar lacks BatchNorm statistics {exc}") from None


def grant_inputs(obs: Observation, threat_model: ThreatModel, truth: GroundTruth | None) -> AttackInputs:
    """The attack's inputs: traffic plus exactly the granted ground truth."""
    needs_truth = threat_model.labels == "known" or threat_model.bn_stats == "exact"
    ev = private_batch(obs, truth) if needs_truth and truth is not None else None
    if needs_truth and ev is None:
        raise GrantError("threat: labels='known' and bn_stats='exact' need a ground-truth sidecar, which this run lacks")
    inputs = AttackInputs(
        model=obs.model,
        update=obs.update,
        update_kind=obs.update_kind,  # type: ignore[arg-type]
        image_shape=obs.image_shape,
        num_classes=obs.num_classes,
        labels=ev.trained_labels if ev is not None and threat_model.labels == "known" else None,
        bn_exact=_bn_exact(obs, ev) if ev is not None and threat_model.bn_stats == "exact" else None,
        data_range=obs.input_range,
        sign_center=obs.center_tensor if obs.sign_center is not None else None,
        extra={"running_stats": obs.running_stats} if obs.running_stats else {},
    )
    return inputs
