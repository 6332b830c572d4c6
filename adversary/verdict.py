"""Calibrated verdicts: is a reconstruction its private image, something like it, or nothing?

A score means little without its reference levels. For every verdict the levels come from real
images of the same data (the attacked client's images, from the ground-truth sidecar or the
user's ``--client-data``), under each metric:

- ``unrelated``: the metric between pairs of different real images (median, 5th percentile);
- ``nearest``: a real image's distance to its nearest neighbour among the client's images, for
  real images the client does *not* hold (median, 5th percentile): what a nearest-image search
  finds for an image that is not there;
- ``noise``: uniform noise against the real images (median);
- ``guess``: the best content-free guess against an image: the mean image, or a flat image at the
  data's mean or darkest level (a blank image is close to a thin digit).

Each reconstruction ``r`` is compared with one real image ``o``: its matched private image (fl-sim's
runs: one-to-one matching first), else its nearest image among the client's (an audit). Under a
metric ``m``, with ``t5`` and ``t50`` the 5th percentile and the median of the matching reference
(``unrelated`` pairs for a matched image, ``nearest`` distances for a searched one), ``r`` is

- **recognised** when ``m(r, o) < t50`` and either ``m(r, o)`` is below ``o``'s distance to its own
  nearest neighbour among the client's images (``r`` is closer to ``o`` than any other real image
  is: it singles ``o`` out) or ``m(r, o) < t5`` (closer than all but 5 % of the reference; ``o`` may
  have a near-duplicate) and, for a matched image, ``o`` is ``r``'s nearest image among the client's
  (``r`` retrieves it: a blob where digits are drawn correlates with every digit, and with many of
  them better than with ``o``);
- **partial** when ``m(r, o) < t50``;
- **not recovered** otherwise, and whenever ``r`` is no closer to ``o`` than the best content-free
  guess (then it carries nothing about ``o``).

Two metrics judge, each against its own references: LPIPS (AlexNet; the paper's metric) and the
pixel correlation distance (1 - Pearson correlation of the pixels). The verdict is the stronger of
the two, so neither hides a leak. The correlation distance is blind to brightness and contrast, as
a model whose first convolution feeds BatchNorm is: such a model's update does not change when the
image's intensities are scaled and shifted, so no attack can recover them, and a reconstruction of
the right digit at a lower contrast is still that digit (measured on examples/adam-batchnorm: pixel
MSE 0.07-0.12 for reconstructions anyone can read, as much as unrelated digits). On digit images
LPIPS (AlexNet features of upsampled 28-pixel images) is dominated by background speckle and misses
identity (reconstructions anyone can read scored LPIPS 0.03-0.09 against an unrelated-pair median of
0.043); on natural images LPIPS is the sharper judge. Each verdict names the metric that decided it
and the numbers. PSNR and SSIM judge nothing, but their levels (between different real images,
and of noise) come with every verdict, so a reader can tell what a PSNR of 12 dB means here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from adversary.metrics.image_metrics import psnr, ssim
from adversary.metrics.matching import pairwise_cost

LEVELS = ("not recovered", "partial", "recognised")
METRICS = ("lpips", "correlation")
NOISE_SAMPLES = 16
SCORE_PAIRS = 64  # pairs of different real images behind the PSNR and SSIM levels
CHUNK = 256


def _costs(a: Tensor, b: Tensor, metric: str) -> np.ndarray:
    return np.concatenate([pairwise_cost(a, b[s : s + CHUNK], cost=metric) for s in range(0, len(b), CHUNK)], axis=1)


def _levels(values: np.ndarray) -> dict[str, float]:
    finite = values[np.isfinite(values)]
    if not len(finite):
        return {"median": float("inf"), "p5": float("inf")}
    return {"median": float(np.median(finite)), "p5": float(np.percentile(finite, 5))}


def _score_levels(sample: Tensor, noise: Tensor, rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """PSNR and SSIM between different real images and of noise against real ones (medians): what a
    reconstruction's PSNR or SSIM must beat to say anything about its image. They judge nothing."""
    n = len(sample)
    first = rng.integers(0, n, SCORE_PAIRS)
    second = (first + rng.integers(1, n, SCORE_PAIRS)) % n
    against = sample[torch.arange(len(noise)) % n]
    out = {}
    for name, score in (("psnr", psnr), ("ssim", ssim)):
        unrelated = score(sample[torch.as_tensor(first)], sample[torch.as_tensor(second)]).numpy()
        out[name] = {"unrelated_median": float(np.median(unrelated)),
                     "noise_median": float(np.median(score(noise, against).numpy()))}
    return out


class Judge:
    """Verdicts against the attacked client's real images (N, C, H, W in [0, 1]).

    ``candidates``: the client's images (the private images among them, for a matched verdict);
    ``holdout``: real images of the same data the client does not hold, for the ``nearest``
    reference (without them, the candidates' own nearest neighbours stand in). References over
    pairs use a seeded sample of at most ``pool`` candidates."""

    def __init__(self, candidates: Tensor, holdout: Tensor | None = None, pool: int = 32, seed: int = 0) -> None:
        if len(candidates) < 2:
            raise ValueError(f"calibrating a verdict needs at least 2 real images, got {len(candidates)}")
        self.candidates = candidates.clamp(0, 1)
        rng = np.random.default_rng(seed)
        sample = self.candidates[torch.as_tensor(np.sort(rng.choice(len(candidates), min(pool, len(candidates)), replace=False)))]
        mean_level = float(sample.mean())
        dark = float(sample.amin(dim=(1, 2, 3)).median())
        self.guesses = torch.cat([sample.mean(0, keepdim=True), torch.full_like(sample[:1], mean_level),
                                  torch.full_like(sample[:1], dark)])
        noise = torch.rand((NOISE_SAMPLES, *candidates.shape[1:]), generator=torch.Generator().manual_seed(seed))
        eye = np.eye(len(sample), dtype=bool)
        self.refs: dict[str, dict[str, float]] = {}
        for m in METRICS:
            within = pairwise_cost(sample, sample, cost=m)
            unrelated = _levels(within[~eye])
            if holdout is not None and len(holdout):
                nearest = _levels(_costs(holdout.clamp(0, 1)[:pool], self.candidates, m).min(axis=1))
            else:
                nearest = _levels(np.where(eye, np.inf, within).min(axis=1))
            self.refs[m] = {"unrelated_median": unrelated["median"], "unrelated_p5": unrelated["p5"],
                            "nearest_median": nearest["median"], "nearest_p5": nearest["p5"],
                            "noise_median": float(np.median(pairwise_cost(noise, sample, cost=m)))}
        self.score_refs = _score_levels(sample, noise, rng)
        self._nearest_other: dict[tuple[str, int], float] = {}

    def references(self) -> dict[str, dict[str, float]]:
        """The levels of the judging metrics, and of PSNR and SSIM (higher is closer) for reading those."""
        return {m: {k: round(v, 6) for k, v in r.items()} for m, r in {**self.refs, **self.score_refs}.items()}

    def nearest_other(self, metric: str, o: int) -> float:
        """Candidate ``o``'s distance to its nearest other candidate (identical copies excluded)."""
        key = (metric, o)
        if key not in self._nearest_other:
            row = _costs(self.candidates[o : o + 1], self.candidates, metric)[0]
            same = (self.candidates - self.candidates[o]).flatten(1).abs().amax(1).numpy() == 0
            others = row[~same]
            self._nearest_other[key] = float(others.min()) if len(others) else float("inf")
        return self._nearest_other[key]

    def judge(self, recons: Tensor, originals: list[int] | None = None) -> list[dict[str, Any]]:
        """One verdict per reconstruction; ``originals[i]``: the candidate index of reconstruction i's private
        image (None: compare each with its nearest candidate, per metric)."""
        recons = recons.clamp(0, 1)
        out = []
        costs = {m: _costs(recons, self.candidates, m) for m in METRICS}
        for i in range(len(recons)):
            per_metric = {}
            for m in METRICS:
                o = int(originals[i]) if originals is not None else int(np.argmin(costs[m][i]))
                d = float(costs[m][i, o])
                nn_self = self.nearest_other(m, o)
                guess = float(pairwise_cost(self.guesses, self.candidates[o : o + 1], cost=m).min())
                ref = self.refs[m]
                t5, t50 = ((ref["unrelated_p5"], ref["unrelated_median"]) if originals is not None
                           else (ref["nearest_p5"], ref["nearest_median"]))
                # a matched image counts as a near-duplicate's twin only if the reconstruction retrieves it:
                # no other real image of the client is closer to it (a blob in the right place is not)
                retrieved = originals is None or d <= float(costs[m][i].min())
                level = 0 if d >= guess or d >= t50 else 2 if d < nn_self or (d < t5 and retrieved) else 1
                per_metric[m] = {"distance": round(d, 6), "image": o, "nearest_other": round(nn_self, 6),
                                 "guess": round(guess, 6), "retrieved": retrieved, "verdict": LEVELS[level],
                                 "level": level}
            best = max(per_metric, key=lambda m: per_metric[m]["level"])
            out.append({"verdict": per_metric[best]["verdict"], "decided_by": best, "image": per_metric[best]["image"],
                        "metrics": {m: {k: v for k, v in d.items() if k != "level"} for m, d in per_metric.items()}})
        return out


def summarize(verdicts: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts per level, and the update's verdict: a single recognised image is a leak."""
    counts = {level: sum(v["verdict"] == level for v in verdicts) for level in LEVELS}
    overall = next((level for level in reversed(LEVELS) if counts[level]), LEVELS[0])
    return {"verdict": overall, "verdict_counts": counts}
