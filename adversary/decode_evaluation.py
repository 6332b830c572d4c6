"""The evaluator's side of a decode job: the mixing keys it grants, and the scores it gives.

A decode job (:mod:`adversary.decode_job`) inverts a MixUp/InstaHide client's updates over T epochs
and decodes the private images from the inverted encodings. Only this module reads the ground
truth for it, through the run's :class:`~adversary.evaluation.Evaluator`: the keys (partners and
coefficients, never InstaHide's signs) where the threat model grants them, the sidecar's exact
encodings as the noise-free reference of the T-epochs sweep, and the private images to score
against. Decoded images are matched one-to-one to the private images before any metric, and the
same scores are given to the inverted encodings themselves taken as candidates: a decode that does
not beat them has added nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from adversary.decode import EncodingSet, cluster_jaccard, cluster_purity, collect_encodings, membership
from adversary.evaluation import POOL_SIZE, Evaluator, GrantError, matched_to, matched_verdicts, score_reconstruction
from adversary.observation import Observation
from fl_sim.threat import ThreatModel


@dataclass
class GrantedKeys:
    """The mixing keys of the gathered encodings, in their row order: partners as compact private ids."""

    partners: np.ndarray  # (M, k) int64
    coeffs: np.ndarray  # (M, k) float32
    num_private: int


def check_key_grant(evaluator: Evaluator, threat_model: ThreatModel) -> None:
    """Refuse (one line) a keyed decode the run cannot grant: no sidecar to read the keys from, or no grant."""
    if evaluator.truth is None:
        raise GrantError("decode keys: this run kept no ground-truth sidecar (tap.ground_truth) to grant the keys from; "
                         "decode keyless")
    if not threat_model.mixing_keys:
        raise GrantError("threat.mixing_keys: decode keys needs the mixing keys granted (--set threat.mixing_keys=true), "
                         "or decode keyless")


class DecodeEvaluator:
    """Grants and scores for one decode job over ``observations`` (one client's updates, in order)."""

    def __init__(self, evaluator: Evaluator, observations: list[Observation]) -> None:
        self.evaluator = evaluator
        self.observations = observations
        self._set: EncodingSet | None = None

    @property
    def has_truth(self) -> bool:
        return self.evaluator.truth is not None

    def encoding_set(self) -> EncodingSet:
        """The sidecar's steps behind the gathered updates, with their keys and private images (read once)."""
        if self._set is None:
            if self.evaluator.truth is None:
                raise GrantError("decode: this run has no ground-truth sidecar to grant keys or score from")
            steps = []
            for obs in self.observations:
                ev = self.evaluator.private(obs)
                if ev is None:
                    raise GrantError(f"MSG_ID: the ground-truth sidecar has no private batch for message {obs.message}")
                steps.extend(ev.batch.steps)
            try:
                self._set = collect_encodings(steps)
            except ValueError as exc:
                raise GrantError(f"decode: {exc}") from None
        return self._set

    def keys(self, threat_model: ThreatModel) -> GrantedKeys:
        """The mixing keys, where ``threat.mixing_keys`` grants them (the paper's upper bound)."""
        check_key_grant(self.evaluator, threat_model)
        found = self.encoding_set()
        return GrantedKeys(found.partners, found.coeffs, found.num_private)

    def exact_encodings(self, unsign: Any) -> Tensor:
        """The sidecar's encodings (|x - c| under InstaHide): what a perfect inversion would give."""
        return unsign(self.encoding_set().encodings)

    def row_order(self, inverted: list[Tensor], unsign: Any) -> np.ndarray:
        """For each inverted row, the sidecar row it reconstructs: the attack's own order where it
        follows the batch (granted labels), else matched per update by MSE (scoring only)."""
        exact = self.exact_encodings(unsign)
        order, start = [], 0
        for rows in inverted:
            truth = exact[start : start + len(rows)]
            if len(rows) == 1 or len(rows) != len(truth):
                order.extend(range(start, start + len(rows)))
            else:
                cost = ((rows[:, None] - truth[None]) ** 2).flatten(2).mean(2).numpy()
                r, c = linear_sum_assignment(cost)
                perm = np.empty(len(rows), np.int64)
                perm[r] = c
                order.extend((start + perm).tolist())
            start += len(truth)
        return np.asarray(order, np.int64)

    def originals(self, unsign: Any) -> Tensor:
        """The private images the gathered updates trained on (each once; |x - c| under InstaHide)."""
        found = self.encoding_set()
        assert found.truth is not None
        return unsign(found.truth[torch.as_tensor(found.truth_known)])

    def score(self, candidates: Tensor, unsign: Any, client: int | None) -> dict[str, Any]:
        """Matched LPIPS/PSNR/SSIM of the decoder's candidates against the private images, with the
        calibrated verdicts (against the client's other images)."""
        originals = self.originals(unsign)
        metrics = score_reconstruction(candidates.clamp(0, 1), originals, "lpips")
        nodes = (client,) if client is not None else ()
        others = [unsign(torch.from_numpy(a)[None])[0] for a in self.evaluator.truth.images_of(nodes, "images", POOL_SIZE)]
        if len(originals):
            metrics.update(matched_verdicts(matched_to(candidates.clamp(0, 1), originals, metrics["perm"]), originals, others))
        return metrics

    def encodings_score(self, encodings: Tensor, unsign: Any) -> dict[str, Any]:
        """The inverted encodings themselves as candidates: the floor a decode must beat."""
        scored = score_reconstruction(encodings.clamp(0, 1), self.originals(unsign), "lpips")
        return {"lpips_avg": scored["lpips_avg"], "psnr_avg": scored["psnr_avg"], "exact_recovered": scored["exact_recovered"]}

    def inversion_score(self, encodings: Tensor, order: np.ndarray, unsign: Any) -> dict[str, Any]:
        """How well the updates were inverted: each encoding against the one it reconstructs."""
        exact = self.exact_encodings(unsign)[torch.as_tensor(order)]
        mse = ((encodings.clamp(0, 1) - exact) ** 2).flatten(1).mean(1).clamp_min(1e-10)
        psnr = (10 * torch.log10(1 / mse)).clamp(max=100.0)
        return {"psnr_avg": float(psnr.mean()), "psnr_min": float(psnr.min()), "rows": len(order)}

    def clusters(self, clusters: list[np.ndarray], order: np.ndarray) -> dict[str, Any]:
        """Keyless clusters (inverted rows per recovered image) against the true memberships."""
        found = self.encoding_set()
        member = membership(found.partners, found.num_private)[order]
        jac = cluster_jaccard(clusters, member)
        return {**cluster_purity(clusters, member), "jaccard": jac["jaccard"], "private_images_mixed": found.num_private}
