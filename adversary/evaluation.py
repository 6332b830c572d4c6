"""The evaluator: the only reader of the ground truth, to grant what the threat model allows and to score.

An attack job opens the ground-truth sidecar once, through an :class:`Evaluator`:
it hands the attack exactly the knowledge the threat model grants (the private
labels, the private batch's BatchNorm statistics) and, after the attack, scores the
reconstructions against the private images. Scoring matches reconstructions
one-to-one to the originals (the method's cost: LPIPS for optimisation, MSE for
analytic recoveries) before any metric; a missing reconstruction counts as not
recovered. An image counts as recovered exactly at PSNR >= 40 dB.

For an audited app there is no sidecar: with the user's grant of the attacked
client's data (``--client-data``), each reconstruction is scored by its LPIPS to
the nearest image there.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from adversary.attacks import AttackInputs, label_accuracy
from adversary.methods import AttackMethod, Reconstruction
from adversary.metrics import evaluate_reconstruction, lpips_distance
from adversary.observation import Observation
from fl_sim.ground_truth import GroundTruth, PrivateBatch
from fl_sim.models import bn_layers
from fl_sim.rundir import SIMULATION_JSON
from fl_sim.threat import NAMED_THREAT_MODELS, ThreatModel, ThreatModelError, ThreatSettings, resolve_threat_model

EXACT_PSNR = 40.0
PSNR_CAP = 100.0  # a bit-exact image has infinite PSNR; averages count it as 100 dB

ClientData = Callable[[int, int], Tensor]  # (partition, num_partitions) -> that partition's images


class GrantError(ValueError):
    """A threat-model choice that cannot be honoured for this observation; one line."""


def default_grants(obs: Observation) -> dict[str, Any]:
    """The threat model before the user's choices: what the traffic reveals plus the default grants.

    fl-sim's own runs: the paper's strongest attacker (labels and, for BatchNorm models, the private
    batch's statistics). An audited app: nothing from a sidecar (labels and BN statistics unknown).
    A malicious server: the control its position gives it and public data, no private knowledge."""
    if obs.kind == "malicious":
        grants = {**NAMED_THREAT_MODELS["malicious-server"], "control": obs.control}
    elif obs.foreign:
        grants = {"labels": "unknown", "bn_stats": "none"}
    else:
        grants = {"labels": "known", "bn_stats": "exact" if bn_layers(obs.model) else "none"}
    return {
        **grants,
        "num_images": obs.num_examples or None,  # a client that refused the round trained on nothing
        "local_steps": obs.local["local_steps"] if obs.update_kind != "gradient" else 1,
        "local_lr": obs.local["lr"],
        "local_batch_size": obs.local["batch_size"],
        "mixing_keys": False,
    }


def threat_model_for(obs: Observation, choices: dict[str, Any] | ThreatSettings | None = None) -> ThreatModel:
    try:
        return resolve_threat_model(default_grants(obs), choices)
    except ThreatModelError as exc:
        raise GrantError(str(exc)) from None


@dataclass
class Evaluation:
    """The private data behind an observation, for granting and scoring only.

    With a batch encoder (MixUp, InstaHide) the model was trained on ``encoded``
    images with soft ``encoded_labels``: that is what a gradient can reveal.
    """

    images: Tensor
    labels: Tensor
    indices: np.ndarray
    batch: PrivateBatch
    encoded: Tensor | None = None
    encoded_labels: Tensor | None = None

    @property
    def trained_on(self) -> Tensor:
        return self.encoded if self.encoded is not None else self.images

    @property
    def trained_labels(self) -> Tensor:
        return self.encoded_labels if self.encoded_labels is not None else self.labels

    def distinct(self) -> tuple[Tensor, Tensor]:
        """What the model saw, each private image once however many local steps saw it."""
        _, first = np.unique(self.indices, return_index=True)
        keep = torch.as_tensor(np.sort(first))
        return self.trained_on[keep], self.trained_labels[keep]


def _cat(batches: list[PrivateBatch], key: str) -> Tensor | None:
    steps = [s for b in batches for s in b.steps]
    if not steps or not all(key in s for s in steps):
        return None
    return torch.cat([torch.from_numpy(s[key]) for s in steps])


def _hard(labels: Tensor) -> Tensor:
    return labels.argmax(-1) if labels.is_floating_point() and labels.dim() > 1 else labels.long()


def score_reconstruction(candidates: Tensor, originals: Tensor, match: str = "lpips") -> dict[str, Any]:
    """Matched LPIPS/PSNR/SSIM per image with summaries, and the images recovered exactly (PSNR >= 40 dB)."""
    m = len(originals)
    if m == 0:
        return {"num_images": 0, "exact_recovered": 0}
    pool = candidates
    if len(pool) < m:  # fewer candidates than images: the rest count as not recovered
        pool = torch.cat([pool, torch.zeros(m - len(pool), *originals.shape[1:])])
    metrics = evaluate_reconstruction(pool, originals, match=match)
    p = np.asarray(metrics["psnr"])
    metrics["exact_recovered"] = int((p >= EXACT_PSNR).sum())
    metrics["psnr_avg"] = float(np.mean(np.minimum(p, PSNR_CAP)))
    metrics["num_images"] = m
    return metrics


class Evaluator:
    """Grants and scores with the ground-truth sidecar of one run (None for an audit: no ground truth)."""

    def __init__(self, run_dir: str | Path, truth: GroundTruth | None) -> None:
        self.run_dir = Path(run_dir)
        self.truth = truth
        self._private: dict[int, Evaluation | None] = {}

    @classmethod
    def open(cls, run_dir: str | Path) -> Evaluator:
        try:
            truth = GroundTruth.open(run_dir)
        except FileNotFoundError:
            truth = None
        return cls(run_dir, truth)

    def private(self, obs: Observation) -> Evaluation | None:
        """The private data behind an update (all contributing clients' for an aggregate), read once."""
        key = id(obs)
        if key not in self._private:
            self._private[key] = self._read(obs)
        return self._private[key]

    def _read(self, obs: Observation) -> Evaluation | None:
        if self.truth is None:
            return None
        if obs.aggregate_of:
            batches = [self.truth.batch_for_round(obs.round, node) for node in obs.aggregate_of]
        else:
            batches = [self.truth.batch_for(obs.reply.reply_to or "" if obs.reply is not None else "")]
        if not batches or any(b is None for b in batches):
            raise GrantError(f"MSG_ID: the ground-truth sidecar has no private batch for message {obs.message}")
        images, labels = _cat(batches, "images"), _cat(batches, "labels")
        indices = np.concatenate([s["indices"] for b in batches for s in b.steps]) if images is not None else np.empty(0)
        if images is None or labels is None:  # a refused round: nothing was trained on
            images, labels = torch.empty(0, *obs.image_shape), torch.empty(0, dtype=torch.long)
        return Evaluation(images, labels, indices, batches[0], _cat(batches, "encoded"), _cat(batches, "encoded_labels"))

    # ------------------------------------------------------------------ grants

    def grant(self, obs: Observation, threat_model: ThreatModel) -> AttackInputs:
        """The attack's inputs: the observation plus exactly the granted ground truth."""
        needs_truth = threat_model.labels == "known" or threat_model.bn_stats == "exact"
        ev = self.private(obs) if needs_truth else None
        if needs_truth and ev is None:
            raise GrantError("threat: labels='known' and bn_stats='exact' need a ground-truth sidecar, which this run lacks")
        return AttackInputs(
            model=obs.model,
            update=obs.update,
            update_kind=obs.update_kind,
            image_shape=obs.image_shape,
            num_classes=obs.num_classes,
            labels=ev.trained_labels if ev is not None and threat_model.labels == "known" else None,
            bn_exact=self._bn_exact(obs, ev) if ev is not None and threat_model.bn_stats == "exact" else None,
            data_range=obs.input_range,
            sign_center=obs.center_tensor if obs.sign_center is not None else None,
            extra={"running_stats": obs.running_stats} if obs.running_stats else {},
        )

    @staticmethod
    def _bn_exact(obs: Observation, ev: Evaluation) -> list[tuple[Tensor, Tensor]]:
        layers = bn_layers(obs.model)
        if not layers:
            return []  # nothing to grant: the model has no BatchNorm layer
        if obs.aggregate_of:
            raise GrantError("threat.bn_stats: 'exact' is undefined for an aggregate of several clients' batches "
                             "(use 'proxy' or 'none')")
        if len(ev.batch.steps) != 1:
            raise GrantError("threat.bn_stats: 'exact' is defined for one local step; this update has "
                             f"{len(ev.batch.steps)} (use 'proxy', 'infer' or 'none')")
        step = ev.batch.steps[0]
        names = [n for n, m in obs.model.named_modules() if m in set(layers)]
        try:
            return [(torch.from_numpy(step[f"bn/{n}.mean"]), torch.from_numpy(step[f"bn/{n}.var"])) for n in names]
        except KeyError as exc:
            raise GrantError(f"threat.bn_stats: the sidecar lacks BatchNorm statistics {exc}") from None

    # ------------------------------------------------------------------ scoring

    def originals(self, obs: Observation, method: AttackMethod, recon: Reconstruction) -> tuple[Tensor, Tensor] | None:
        """What the reconstructions are compared with (|x - c| under InstaHide) and their labels, or None."""
        ev = self.private(obs)
        if ev is None:
            return None
        images, labels = ev.distinct() if method.distinct_images else (ev.trained_on, ev.trained_labels)
        if recon.target_class is not None:
            keep = _hard(labels) == recon.target_class
            images, labels = images[keep], labels[keep]
        return obs.unsigned(images), labels

    def score(self, obs: Observation, method: AttackMethod, recon: Reconstruction) -> dict[str, Any]:
        """Metrics of the reconstructions against the private images ({} without ground truth)."""
        ev = self.private(obs)
        found = self.originals(obs, method, recon)
        if ev is None or found is None:
            return {}
        originals, labels = found
        metrics: dict[str, Any] = {}
        if recon.target_class is not None:
            metrics["batch_images"] = len(ev.distinct()[0] if method.distinct_images else ev.trained_on)
        metrics.update(score_reconstruction(obs.unsigned(recon.images).clamp(0, 1), originals, method.match))
        if recon.labels is not None and len(labels):
            metrics["label_accuracy"] = label_accuracy(_hard(recon.labels), _hard(labels))
        metrics["scored_against"] = "encoded" if ev.encoded is not None else "private"
        return metrics

    def score_foreign(self, obs: Observation, images: Tensor, client_data: ClientData | None) -> dict[str, Any]:
        """An audited app: where each hyperparameter came from and, with the user's grant of the client's
        data, each reconstruction's LPIPS to its nearest image there."""
        out: dict[str, Any] = {"hyperparameters": obs.local.get("sources", {})}
        if client_data is not None:
            sim = json.loads((self.run_dir / SIMULATION_JSON).read_text())
            partition = sim["partition_of_node"][str(obs.client)]
            lp = nearest_lpips(images, client_data(partition, sim["num_partitions"]))
            out.update({"nearest_lpips": lp, "nearest_lpips_avg": sum(lp) / len(lp), "nearest_lpips_best": min(lp),
                        "client_partition": partition})
        return out


def nearest_lpips(recon: Tensor, candidates: Tensor, chunk: int = 256) -> list[float]:
    """For each reconstruction, the LPIPS to its nearest image among ``candidates``."""
    best = []
    for r in recon.clamp(0, 1):
        dists = []
        for start in range(0, len(candidates), chunk):
            block = candidates[start : start + chunk]
            with torch.no_grad():
                dists.append(lpips_distance(r.expand_as(block).contiguous(), block))
        best.append(float(torch.cat(dists).min()))
    return best
