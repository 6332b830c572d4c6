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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from adversary.attacks import AttackInputs, label_accuracy
from adversary.attacks.simulate import recipe_batches, replay_error
from adversary.methods import AttackMethod, Reconstruction
from adversary.metrics import evaluate_reconstruction, lpips_distance
from adversary.metrics.matching import pairwise_cost
from adversary.observation import Observation
from adversary.verdict import Judge, summarize
from fl_sim.ground_truth import GroundTruth, PrivateBatch
from fl_sim.models import bn_layers
from fl_sim.rundir import SIMULATION_JSON
from fl_sim.threat import NAMED_THREAT_MODELS, ThreatModel, ThreatModelError, ThreatSettings, resolve_threat_model

EXACT_PSNR = 40.0
PSNR_CAP = 100.0  # a bit-exact image has infinite PSNR; averages count it as 100 dB
POOL_SIZE = 32  # real images of the same data a verdict is calibrated against
RECIPE_TOLERANCE = 0.01  # a recipe replayed on the true batch within 1 % of the observed update is right
UNSIMULATED_DEFENSES = ("gradprune", "dp")  # update transforms and noisy steps the attacker cannot replay

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
        self._client_data: tuple[Tensor, Tensor | None, int] | None = None

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
            recipe=obs.recipe,
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

    # ------------------------------------------------------------------ the recipe check

    def true_steps(self, obs: Observation, client_data: ClientData | None = None,
                   num_images: int | None = None) -> list[list[tuple[Tensor, Tensor]]] | None:
        """Each contributing client's local steps on its true batches ((x, y) per step), or None.

        fl-sim's runs: the sidecar's steps (encoded images and their labels where an encoder ran).
        An audit: the client's data as ``--client-data`` gives it (images and labels, in the order the
        client walks them), cut into the recipe's batches."""
        ev = self.private(obs)
        if ev is not None:
            batches = [self.truth.batch_for_round(obs.round, n) for n in obs.aggregate_of] if obs.aggregate_of else [ev.batch]
            return [[(torch.from_numpy(s.get("encoded", s["images"])), torch.from_numpy(s.get("encoded_labels", s["labels"])))
                     for s in b.steps] for b in batches if b is not None]
        if client_data is None:
            return None
        data = self.client_data(obs, client_data)
        count = num_images or obs.num_examples
        if data is None or data[1] is None or not count:
            return None
        x, y = data[0][:count], data[1][:count]
        recipe = obs.recipe
        from_slots = recipe_batches(recipe, len(x), int(obs.local["local_steps"]), obs.local["batch_size"])
        return [[(x[idx], y[idx]) for idx in from_slots]]

    def recipe_check(self, obs: Observation, inputs: AttackInputs, threat_model: ThreatModel,
                     client_data: ClientData | None = None) -> dict[str, Any]:
        """Replay the attacker's model of the client (its recipe, the threat model's hyperparameters) on the
        true batches: the relative error between the simulated and the observed update (``recipe_error``).
        A large one means the attack models the client wrongly (optimiser, normalisation, batching) and its
        reconstructions mean little."""
        steps = self.true_steps(obs, client_data, threat_model.num_images)
        if not steps:
            return {"recipe_check": "not run: no true batch (no ground truth; give --client-data with labels)"}
        error = replay_error(inputs, threat_model, steps)
        out: dict[str, Any] = {"recipe_error": error, "recipe_ok": bool(error <= RECIPE_TOLERANCE)}
        if error > RECIPE_TOLERANCE:
            unsimulated = [d for d in obs.defenses if d in UNSIMULATED_DEFENSES]
            why = (f" (the client's {', '.join(unsimulated)} is not simulated)" if unsimulated else
                   ": check the optimiser, its hyperparameters, the input normalisation and the batching")
            out["recipe_warning"] = (f"the attacker's model of the client is wrong: replaying it on the true batch "
                                     f"gives an update {error:.1%} away from the observed one{why}")
        return out

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

    def assess(self, obs: Observation, method: AttackMethod, recon: Reconstruction,
               client_data: ClientData | None = None, num_images: int | None = None) -> Assessment:
        """Metrics and calibrated verdicts of the reconstructions, and the real images to show with them."""
        shown = obs.unsigned(recon.images).clamp(0, 1)
        if obs.foreign:
            return self._assess_foreign(obs, method, shown, client_data, num_images)
        ev = self.private(obs)
        found = self.originals(obs, method, recon)
        if ev is None or found is None:
            return Assessment({}, shown)
        originals, labels = found
        metrics: dict[str, Any] = {}
        if recon.target_class is not None:
            metrics["batch_images"] = len(ev.distinct()[0] if method.distinct_images else ev.trained_on)
        metrics.update(score_reconstruction(shown, originals, method.match))
        if recon.labels is not None and len(labels):
            metrics["label_accuracy"] = label_accuracy(_hard(recon.labels), _hard(labels))
        metrics["scored_against"] = "encoded" if ev.encoded is not None else "private"
        if len(originals):
            metrics.update(self._verdicts(obs, ev, matched_to(shown, originals, metrics["perm"]), originals))
        return Assessment(metrics, shown, originals)

    def _verdicts(self, obs: Observation, ev: Evaluation, matched: Tensor, originals: Tensor) -> dict[str, Any]:
        """Calibrated verdicts against real images of the attacked clients' data from the sidecar."""
        key = "encoded" if ev.encoded is not None else "images"
        nodes = obs.aggregate_of or ((obs.client,) if obs.client is not None else ())
        others = [obs.unsigned(torch.from_numpy(a)[None])[0] for a in self.truth.images_of(nodes, key, POOL_SIZE)]
        return matched_verdicts(matched, originals, others)

    def client_data(self, obs: Observation, client_data: ClientData) -> tuple[Tensor, Tensor | None] | None:
        """The attacked client's data from the user's ``--client-data`` (images, and labels if it gives them)."""
        if obs.client is None:
            return None
        if self._client_data is None:
            sim = json.loads((self.run_dir / SIMULATION_JSON).read_text())
            partition = sim["partition_of_node"][str(obs.client)]
            self._client_data = (*_partition_data(client_data, partition, sim["num_partitions"]), partition)
        images, labels, _ = self._client_data
        return images, labels

    @property
    def client_partition(self) -> int | None:
        return self._client_data[2] if self._client_data is not None else None

    def _assess_foreign(self, obs: Observation, method: AttackMethod, shown: Tensor, client_data: ClientData | None,
                        num_images: int | None) -> Assessment:
        """An audited app: where each hyperparameter came from and, with the user's grant of the client's
        data, each reconstruction's nearest image there and its LPIPS (shown under it in the grid), and
        the calibrated verdicts: against the images the client trained on (the first ``num_images`` of
        its data, in the order ``--client-data`` gives them), matched one-to-one as in fl-sim's own runs;
        when the count is unknown, against each reconstruction's nearest image."""
        out: dict[str, Any] = {"hyperparameters": obs.local.get("sources", {})}
        if client_data is None:
            return Assessment(out, shown)
        data = self.client_data(obs, client_data)
        if data is None:  # no single client (an aggregate): no one partition to score against
            return Assessment(out, shown)
        images, _ = data
        lp = nearest_lpips(shown, images)
        # the image shown under each reconstruction: its nearest in pixels (LPIPS misses digits' identity)
        nearest_index = [int(i) for i in pairwise_cost(shown, images, cost="correlation").argmin(axis=1)]
        out.update({"nearest_lpips": lp, "nearest_lpips_avg": sum(lp) / len(lp), "nearest_lpips_best": min(lp),
                    "nearest_images": nearest_index, "client_partition": self.client_partition})
        nearest = images[torch.as_tensor(nearest_index)]
        if len(images) < 2:
            out["verdict_note"] = "too few of the client's images to calibrate a verdict"
            return Assessment(out, shown, nearest, compare_below=True)
        count = num_images or obs.num_examples
        if count and count <= len(images):
            private = images[:count]
            scored = score_reconstruction(shown, private, method.match)
            out.update(scored)
            out.update(matched_verdicts(matched_to(shown, private, scored["perm"]), private, images))
            out["scored_against"] = f"the first {count} images of the client's data (its batch)"
        else:
            judge = Judge(images, holdout=self._holdout(client_data), pool=POOL_SIZE)
            verdicts = judge.judge(shown)
            out.update({**summarize(verdicts), "verdicts": verdicts, "references": judge.references(),
                        "reference_images": len(images), "scored_against": "each reconstruction's nearest image"})
        return Assessment(out, shown, nearest, compare_below=True)

    def _holdout(self, client_data: ClientData) -> Tensor | None:
        """Real images of the same data that the attacked client does not hold: other partitions' images."""
        sim = json.loads((self.run_dir / SIMULATION_JSON).read_text())
        found: list[Tensor] = []
        for partition in range(sim["num_partitions"]):
            if partition == self.client_partition:
                continue
            found.append(_partition_data(client_data, partition, sim["num_partitions"])[0])
            if sum(len(f) for f in found) >= POOL_SIZE:
                break
        return torch.cat(found)[:POOL_SIZE] if found else None


def _partition_data(client_data: ClientData, partition: int, num_partitions: int) -> tuple[Tensor, Tensor | None]:
    """One partition from the user's ``--client-data``: images, and labels if it returns them."""
    got = client_data(partition, num_partitions)
    images, labels = (got[0], got[1]) if isinstance(got, (tuple, list)) else (got, None)
    return torch.as_tensor(images).float(), None if labels is None else torch.as_tensor(labels).long()


@dataclass
class Assessment:
    """What the evaluator says about an attack's reconstructions, and what to show with them."""

    metrics: dict[str, Any]
    shown: Tensor  # the reconstructions as judged (|x - c| under InstaHide), in [0, 1]
    compare: Tensor | None = None  # the matched private images, or (an audit) each reconstruction's nearest image
    compare_below: bool = False


def _pool_with(first: Tensor, others: list[Tensor]) -> tuple[Tensor, list[int]]:
    """Distinct real images, ``first``'s rows first; ``index[i]``: row i of ``first`` in the pool."""
    pool: list[Tensor] = []
    seen: dict[bytes, int] = {}
    index = []
    for image in [*first, *others]:
        digest = image.contiguous().numpy().tobytes()
        if digest not in seen:
            seen[digest] = len(pool)
            pool.append(image)
        if len(index) < len(first):
            index.append(seen[digest])
    return (torch.stack(pool) if pool else torch.empty(0, *first.shape[1:])), index


def matched_to(shown: Tensor, originals: Tensor, perm: list[int]) -> Tensor:
    """Row i: the reconstruction matched to original i (blank where there were fewer reconstructions)."""
    pool = torch.cat([shown, torch.zeros(max(0, len(originals) - len(shown)), *shown.shape[1:])])
    return pool[torch.as_tensor(perm)]


def matched_verdicts(matched: Tensor, originals: Tensor, others: Sequence[Tensor]) -> dict[str, Any]:
    """Calibrated verdicts of matched reconstructions against their private images, with the client's
    other real images (``others``, one [C, H, W] each; any that repeat the originals dropped) as the
    reference pool."""
    pool, index = _pool_with(originals, list(others))
    if len(pool) < 2:
        return {"verdict_note": "too few real images of this client's data to calibrate a verdict"}
    judge = Judge(pool, pool=POOL_SIZE)
    verdicts = judge.judge(matched, index)
    return {**summarize(verdicts), "verdicts": verdicts, "references": judge.references(), "reference_images": len(pool)}


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
