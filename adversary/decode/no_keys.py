"""Decode without keys: the realistic attacker of Carlini et al., minus their learned similarity network.

Observed: M encodings (T epochs of one client) ``z_j = sum_i lambda_ji s_{p_ji}`` (``z = |x~|`` for
InstaHide: the repository mixes images in [0, 1] with nonnegative coefficients before flipping
signs, so the absolute value is the mix exactly). Unknown: which private images each encoding
mixes, the coefficients and the images. Carlini et al. (a) learn a pairwise similarity ("do two
encodings share a private image?"), (b) cluster encodings by shared image with a combinatorial
algorithm and (c) regress the images per cluster. We follow the same three steps with a
learning-free, exact-in-the-noiseless-limit geometry instead of a trained network:

(a) Similarity / subspace. All encodings lie in the span of the P private images, and with
    nonnegative coefficients in their convex cone. We project the encodings on their top-P
    principal directions (``Y = U_P Sigma_P``; the spectrum also estimates P, reported). The
    cosine similarity graph of high-passed encodings (:func:`similarity_graph`) is provided too
    and drives the baseline ``method="similarity"``.
(b) Clustering = facet enumeration of the encoding cone (``method="facets"``, default). The
    encodings that do NOT contain private image c span a facet of the cone; the linear functional
    ``u_c`` vanishing on that facet is c's barycentric coordinate, so ``Y u_c`` is column c of
    the mixing matrix and its support is c's cluster. Every such ``u_c`` is an extreme ray of the
    dual cone, found by a small linear program: minimise ``w^T Y u`` subject to ``Y u >= 0`` and
    ``y_a^T u = 1`` for an anchor encoding ``a`` (the LP's optimum is a facet through one of a's
    images). Anchors are the encodings with the fewest found memberships (each has k), weights
    ``w`` random plus a penalty on the members of facets already found through the anchor, until
    P facets are found or the LP budget is spent. This is exact sparse NMF when every image is
    missing from enough encodings (T epochs of k-sparse mixes of P >> k images: yes).
(c) Coefficients and regression. The cone coordinates are scaled so that each encoding's
    coefficients sum to one (NNLS), then the images are solved by the same least squares as the
    known-keys decode (:func:`adversary.decode.known_keys.solve_mixing`). With noisy encodings
    (e.g. gradient-inverted), a few alternating rounds (per-encoding NNLS of the coefficients
    restricted to the k largest, then images) refine the fit.

Baseline ``method="similarity"``: spectral k-means on the similarity graph (each encoding to its
dominant image), images initialised as cluster means, then the same alternating refinement.

Limits (each measured by the ``decode_epochs`` experiment and the tables' keyless columns; the
README gives the figures):

- Inter-InstaHide without keys (public partners from a large public set) is out of scope: the
  public images raise the rank beyond P. Decode jobs refuse it.
- Noise tilts the facets: gradient-inverted encodings (PSNR ~15-25 dB against the true ones on
  MNIST) give impure clusters, and the alternating refinement only partly repairs them; the
  sweep decodes the sidecar's exact encodings beside the inverted ones to show what noise costs.
- The number of private images P: the spectrum shows it sharply on exact encodings and blurs it
  on inverted ones (:func:`estimate_private_images`); the attacker does better when told the epochs.
- Every image must be missing from enough encodings: with k close to P (e.g. k = 4 of 4 private
  images, every encoding mixing all of them) there is no facet to find, and few epochs (T = 1:
  as many encodings as images) leave the cone under-determined.
- InstaHide's signs flip around a centre c: ``|x~ - c|`` is a mix of ``|s - c|`` only where the
  mixed pixels lie on the same side of c (exact for c = 0), so its decode is approximate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from scipy.cluster.vq import kmeans2
from scipy.optimize import linprog, nnls

from adversary.decode.known_keys import _np, solve_mixing


@dataclass
class NoKeysResult:
    """Recovered images (F, C, H, W) in [0, 1] (F = facets found; order arbitrary: match before
    scoring), identifiable mask (F,), estimated mixing (M, F) (rows sum to ~1), clusters (encoding
    ids per recovered image) and diagnostics."""

    images: torch.Tensor
    identifiable: np.ndarray
    mixing: np.ndarray
    clusters: list[np.ndarray]
    diagnostics: dict[str, Any] = field(default_factory=dict)


def _highpass(z: np.ndarray) -> np.ndarray:
    """Image minus its 3x3 box blur (edge-replicated), per channel: removes the shared low frequencies."""
    pad = np.pad(z, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    h, w = z.shape[-2:]
    blur = sum(pad[..., i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9.0
    return z - blur


def similarity_graph(encodings: Any, signed: bool = False, highpass: bool = True) -> np.ndarray:
    """(M, M) cosine similarity of encodings (``|x~|`` if signed) after removing the mean encoding
    and (optionally) low frequencies; high values suggest a shared private image."""
    z = _np(encodings, np.float64)
    z = np.abs(z) if signed else z
    if z.ndim != 4:
        raise ValueError(f"expected encodings (M, C, H, W), got {z.shape}")
    z = z - z.mean(0, keepdims=True)
    f = (_highpass(z) if highpass else z).reshape(len(z), -1)
    f /= np.linalg.norm(f, axis=1, keepdims=True) + 1e-12
    return f @ f.T


def _facets(y: np.ndarray, target: int, k: int | None, rng: np.random.Generator, max_lps: int, support_tol: float, slack: float):
    m = len(y)
    cols: list[np.ndarray] = []
    members: list[np.ndarray] = []
    count = np.zeros(m, np.int64)
    tries = np.zeros(m, np.int64)
    lps = 0
    scale = np.linalg.norm(y, axis=1)
    while len(cols) < target and lps < max_lps:
        open_ = tries < 3
        if k is not None:
            open_ &= count < k
        if not open_.any():
            break
        low = count[open_].min()
        anchor = int(rng.choice(np.flatnonzero(open_ & (count == low))))
        w = 1.0 + 0.5 * rng.random(m)
        for mem in members:
            if mem[anchor]:
                w += 4.0 * mem
        lps += 1
        res = linprog(
            y.T @ w, A_ub=-y, b_ub=slack * scale, A_eq=y[anchor : anchor + 1], b_eq=[1.0],
            bounds=[(None, None)] * y.shape[1], method="highs",
        )
        tries[anchor] += 1
        if res.status != 0:
            continue
        lam = np.clip(y @ res.x, 0, None)
        lam /= lam.max()
        mem = lam > support_tol
        dup = any(float(lam @ c) / (np.linalg.norm(lam) * np.linalg.norm(c)) > 0.995 for c in cols)
        if dup:
            continue
        cols.append(lam)
        members.append(mem)
        count += mem
    return (np.stack(cols, 1) if cols else np.zeros((m, 0))), lps


def _refine(z: np.ndarray, s: np.ndarray, lam: np.ndarray, k: int | None, iters: int) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Alternate per-encoding NNLS coefficients (top-k kept) and least-squares images (clamped)."""
    history = [float(np.sqrt(np.mean((lam @ s - z) ** 2)))]
    for _ in range(iters):
        new = np.zeros_like(lam)
        for j in range(len(z)):
            coef, _ = nnls(s.T, z[j])
            if k is not None and (coef > 0).sum() > k:
                top = np.argsort(coef)[-k:]
                coef = np.zeros_like(coef)
                coef[top], _ = nnls(s[top].T, z[j])
            new[j] = coef
        s_new, _, _ = solve_mixing(sp.csr_matrix(new), z)
        s_new = np.clip(s_new, 0, 1)
        err = float(np.sqrt(np.mean((new @ s_new - z) ** 2)))
        if err > history[-1] * 0.999:
            break
        lam, s = new, s_new
        history.append(err)
    return s, lam, history


def estimate_private_images(encodings: Any, k: int | None, signed: bool = False) -> int:
    """How many private images the encodings mix, from their spectrum alone: the rank after the largest
    drop between consecutive singular values beyond ``k`` (a mix of k images spans at least k
    directions) and up to half the encodings (beyond that, too few encodings per image to decode).
    Exact encodings have a sharp drop at the true count; inverted ones blur it: the sweep measures how
    often the estimate is right."""
    x = _np(encodings, np.float64)
    z = (np.abs(x) if signed else x).reshape(len(x), -1)
    sv = np.linalg.svd(z, compute_uv=False)
    sv = sv[sv > 1e-12 * sv[0]] if len(sv) else sv
    low, high = (k or 1) + 1, max((k or 1) + 1, len(z) // 2)
    if len(sv) <= low:
        return int(len(sv))
    ratios = sv[low - 1 : min(high, len(sv) - 1)] / sv[low : min(high, len(sv) - 1) + 1]
    return int(low + int(np.argmax(ratios))) if len(ratios) else int(len(sv))


def decode_without_keys(
    encodings: Any,
    num_private_hint: int | None,
    k: int | None,
    signed: bool = False,
    *,
    method: str = "facets",
    seed: int = 0,
    max_lps: int | None = None,
    rank_tol: float = 1e-5,
    support_tol: float = 1e-4,
    slack: float | str = "auto",
    refine_iters: int = 10,
    min_cluster: int = 2,
) -> NoKeysResult:
    """Recover private images from keyless encodings (``|x~|`` if ``signed``).

    ``num_private_hint``: the number of private images mixed (None: the numerical rank of the
    encodings); ``k``: images per encoding (None: unknown, no top-k constraint). ``slack``:
    allowed negativity of the cone coordinates relative to an encoding's norm (0 for exact
    encodings, ~the noise-to-signal ratio otherwise); ``"auto"``: 3 * sigma * sqrt(P) / mean encoding
    norm, sigma the per-entry noise std estimated from the singular values beyond the first P
    (about 0 on exact encodings; ~0.005 for noise std 0.01 on CIFAR-10). Identifiable = the least-squares system on
    the estimated mixing has full rank on the image and its cluster has >= ``min_cluster`` members.
    """
    x = _np(encodings, np.float64)
    z4 = np.abs(x) if signed else x
    m = len(z4)
    z = z4.reshape(m, -1)
    rng = np.random.default_rng(seed)
    u, sv, _ = np.linalg.svd(z, full_matrices=False)
    rank = int((sv > rank_tol * sv[0]).sum())
    p = num_private_hint if num_private_hint is not None else rank
    r = min(p, rank)
    lps = 0
    if slack == "auto":
        d = z.shape[1]
        dof = max(m * d - r * (m + d), 1)
        sigma = float(np.sqrt(np.sum(sv[r:] ** 2) / dof))  # per-entry noise std beyond the top-r subspace
        slack = 3.0 * sigma * np.sqrt(r) / float(np.sqrt(np.mean(np.sum(z**2, 1))))
    slack = float(slack)
    if method == "facets":
        y = u[:, :r] * sv[:r]
        raw, lps = _facets(y, r, k, rng, max_lps if max_lps is not None else 20 * r + 20, support_tol, slack)
        if raw.shape[1]:
            a, _ = nnls(raw, np.ones(m))
            lam = raw * a
        else:
            lam = raw
    elif method == "similarity":
        sim = np.clip(similarity_graph(z4, signed=False), 0, None)
        d = 1 / np.sqrt(sim.sum(1) + 1e-12)
        _, vec = np.linalg.eigh(d[:, None] * sim * d[None, :])
        emb = vec[:, -r:]
        emb /= np.linalg.norm(emb, axis=1, keepdims=True) + 1e-12
        _, labels = kmeans2(emb, r, seed=seed, minit="++")
        lam = np.zeros((m, r))
        lam[np.arange(m), labels] = 1.0
    else:
        raise ValueError(f"method must be 'facets' or 'similarity', got {method!r}")
    lam = lam[:, lam.any(0)]
    f = lam.shape[1]
    if f == 0:
        empty = torch.zeros(0, *z4.shape[1:])
        return NoKeysResult(empty, np.zeros(0, bool), lam, [], {"rank_estimate": rank, "num_lps": lps})
    if method == "similarity":
        s = np.clip((lam / lam.sum(0)).T @ z, 0, 1)  # cluster means
    else:
        s, _, _ = solve_mixing(sp.csr_matrix(lam), z)
        s = np.clip(s, 0, 1)
    err0 = float(np.sqrt(np.mean((lam @ s - z) ** 2)))
    history = [err0]
    if refine_iters and err0 > 1e-5 * float(np.sqrt(np.mean(z**2))):
        s, lam, history = _refine(z, s, lam, k, refine_iters)
    s, ident, diag = solve_mixing(sp.csr_matrix(lam), z)
    s = np.clip(s, 0, 1)
    clusters = [np.flatnonzero(lam[:, c] > support_tol * max(lam[:, c].max(), 1e-300)) for c in range(f)]
    ident &= np.array([len(c) >= min_cluster for c in clusters])
    diag.update(
        method=method, rank_estimate=rank, num_private_used=r, singular_values=sv[: r + 5].tolist(),
        num_lps=lps, num_found=f, slack=slack, noise_std_estimate=float(np.sqrt(np.sum(sv[r:] ** 2) / max(m * z.shape[1] - r * (m + z.shape[1]), 1))), fit_rms_history=history, signed=bool(signed),
    )
    return NoKeysResult(torch.from_numpy(s.reshape(f, *z4.shape[1:]).astype(np.float32)), ident, lam, clusters, diag)
