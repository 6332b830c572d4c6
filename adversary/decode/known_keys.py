"""Decode with the mixing keys known: the paper's upper bound on leakage (Section 5, "The attack").

Every observed encoding is ``x~_j = sigma_j o sum_i lambda_ji s_{p_ji}`` (``sigma_j`` all ones for
MixUp). The attacker of the paper is granted the indices ``p`` and coefficients ``lambda`` but
not the signs. When the signs flip around 0 (InstaHide ``center="zero"``: images in [0, 1]
mixed with nonnegative coefficients, then flipped), ``|x~_j| = sum_i lambda_ji s_{p_ji}`` holds
exactly, so InstaHide is decoded from absolute values exactly as MixUp is decoded from the
encodings (Carlini et al. work with ``|x~|`` too). Flipped around a centre ``c`` (InstaHide's
code: the dataset mean), callers pass ``|x~ - c|`` and the decode is the least-squares
approximation ``|x~_j - c| ~ sum_i lambda_ji |s_{p_ji} - c|``, exact where the mixed pixels lie
on the same side of ``c``. Public partners (Inter-InstaHide) are known to the
attacker and are subtracted, leaving only the private images as unknowns.

Stacking the encodings of T epochs gives a linear system ``A S = B``: ``A`` is the sparse
(encodings x private images) coefficient matrix, ``S`` the private images (one column per
pixel) and ``B`` the encodings. We solve it in the least-squares sense through the normal
equations ``A^T A S = A^T B`` in float64, one connected component of the image co-occurrence
graph at a time, with an eigendecomposition of ``A^T A`` (the pseudo-inverse). That also gives
identifiability exactly: private image ``j`` is determined by the observations iff ``e_j`` lies in
the row space of ``A``, i.e. its projection on the null space of ``A^T A`` vanishes. Images that
are not identifiable (never observed, or only in too few / dependent encodings) are flagged, not
silently returned as if recovered. ``noise_gain[j] = sqrt((A^T A)^+_jj)`` is the factor by which
i.i.d. noise on the encodings is amplified in image ``j`` (a per-image error bar).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import splu

ArrayLike = Any  # numpy array or torch tensor

DENSE_LIMIT = 6000  # largest component solved (and rank-checked) by a dense eigendecomposition


@dataclass
class DecodeResult:
    """Recovered private images (P, C, H, W) float32 in [0, 1], a per-image identifiable mask (P,)
    and diagnostics (per-image counts, noise gains, ranks, residuals, ...)."""

    images: torch.Tensor
    identifiable: np.ndarray
    diagnostics: dict[str, Any] = field(default_factory=dict)


def _np(x: ArrayLike, dtype=None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def mixing_matrix(partners: np.ndarray, coeffs: np.ndarray, num_private: int, private_mask: np.ndarray | None = None) -> sp.csr_matrix:
    """Sparse (M, P) matrix with ``A[j, partners[j, i]] += coeffs[j, i]`` over private entries."""
    partners = np.asarray(partners, np.int64)
    coeffs = np.asarray(coeffs, np.float64)
    if partners.shape != coeffs.shape or partners.ndim != 2:
        raise ValueError(f"partners and coeffs must both be (M, k), got {partners.shape} and {coeffs.shape}")
    mask = np.ones(partners.shape, bool) if private_mask is None else np.asarray(private_mask, bool)
    rows = np.broadcast_to(np.arange(len(partners))[:, None], partners.shape)[mask]
    cols = partners[mask]
    if cols.size and (cols.min() < 0 or cols.max() >= num_private):
        raise ValueError(f"private partner ids must lie in [0, {num_private}), got [{cols.min()}, {cols.max()}]")
    return sp.csr_matrix((coeffs[mask], (rows, cols)), shape=(len(partners), num_private))


def solve_mixing(
    a: sp.spmatrix,
    b: np.ndarray,
    *,
    min_encodings: int = 1,
    rank_tol: float = 1e-10,
    null_tol: float = 1e-8,
    dense_limit: int = DENSE_LIMIT,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Least-squares ``S`` (P, D) float64 of ``A S = B`` (A sparse (M, P), B (M, D)), an identifiable mask and diagnostics.

    Components of the co-occurrence graph are solved independently; each by the pseudo-inverse
    of ``A_c^T A_c`` (eigenvalues below ``rank_tol * max`` treated as zero). Larger components than
    ``dense_limit`` fall back to a sparse LU with a tiny ridge and a count-only identifiability
    check (reported in the diagnostics).
    """
    a = sp.csc_matrix(a, dtype=np.float64)
    m, p = a.shape
    b = np.asarray(b, np.float64).reshape(m, -1)
    gram = (a.T @ a).tocsr()
    atb = a.T @ b
    counts = np.asarray((a != 0).sum(0)).ravel().astype(np.int64)
    n_comp, labels = connected_components(gram != 0, directed=False)
    s = np.zeros((p, b.shape[1]))
    ident = np.zeros(p, bool)
    gain = np.full(p, np.inf)
    ranks, heuristic = [], 0
    for c in range(n_comp):
        idx = np.flatnonzero(labels == c)
        if counts[idx].sum() == 0:  # never observed
            continue
        g = gram[idx][:, idx].toarray()
        if len(idx) <= dense_limit:
            w, v = np.linalg.eigh(g)
            keep = w > rank_tol * max(w.max(), 1e-300)
            vr, wr = v[:, keep], w[keep]
            s[idx] = vr @ ((vr.T @ atb[idx]) / wr[:, None])
            null = v[:, ~keep]
            in_null = (null**2).sum(1) if null.size else np.zeros(len(idx))
            ident[idx] = in_null < null_tol
            gain[idx] = np.sqrt(np.maximum(((vr**2) / wr).sum(1), 0))
            ranks.append((len(idx), int(keep.sum())))
        else:
            heuristic += 1
            ridge = 1e-12 * np.trace(g) / len(idx)
            lu = splu(sp.csc_matrix(gram[idx][:, idx] + ridge * sp.eye(len(idx))))
            s[idx] = lu.solve(np.asarray(atb[idx]))
            ident[idx] = True
            ranks.append((len(idx), -1))
    ident &= counts >= min_encodings
    resid = a @ s - b
    diag = {
        "counts": counts,
        "noise_gain": np.where(ident, gain, np.inf),
        "num_components": int(n_comp),
        "component_ranks": ranks,  # (images, rank) per observed component; rank -1 = not checked
        "identifiability": "rank" if heuristic == 0 else f"rank (count-only in {heuristic} large components)",
        "residual_rms": float(np.sqrt(np.mean(resid**2))) if resid.size else 0.0,
        "num_encodings": int(m),
    }
    return s, ident, diag


def decode_with_keys(
    encodings: ArrayLike,
    partners: ArrayLike,
    coeffs: ArrayLike,
    num_private: int | None = None,
    public_images: ArrayLike | None = None,
    signed: bool = False,
    *,
    public_mask: ArrayLike | None = None,
    min_encodings: int = 1,
    max_noise_gain: float | None = None,
    clamp: bool = True,
    rank_tol: float = 1e-10,
) -> DecodeResult:
    """Recover the private images from encodings with known partners and coefficients.

    - ``encodings`` (M, C, H, W): observed (or gradient-inverted) encodings over T epochs.
    - ``partners`` (M, k) int: private ids in ``[0, num_private)`` (see
      :func:`adversary.decode.collect_encodings` for the mapping from dataset indices); where
      ``public_mask`` is true, indices into ``public_images`` instead.
    - ``coeffs`` (M, k): the mixing coefficients.
    - ``public_images`` (Q, C, H, W): Inter-InstaHide's public set, known to the attacker. With it
      and no ``public_mask``, columns 1.. are public (column 0, the own image, is private).
    - ``signed``: the encodings carry unknown random signs (InstaHide); decode from ``|x~|``.
    - ``min_encodings``: an image must appear in at least this many encodings to be reported
      identifiable (on top of the exact rank criterion).
    - ``max_noise_gain``: also flag images whose noise amplification ``sqrt((A^T A)^+_jj)``
      exceeds this (identifiable in exact arithmetic but ill-conditioned: e.g. T = 1 gives ~100).

    Non-identifiable images get the minimum-norm least-squares value (zero when never seen),
    clamped; use the ``identifiable`` mask, never score them as recovered.
    """
    x = _np(encodings, np.float64)
    partners = _np(partners, np.int64)
    coeffs = _np(coeffs, np.float64)
    m = len(x)
    if partners.shape[0] != m or coeffs.shape[0] != m:
        raise ValueError(f"{m} encodings but keys for {partners.shape[0]} / {coeffs.shape[0]}")
    shape = x.shape[1:]
    b = np.abs(x) if signed else x.copy()
    b = b.reshape(m, -1)
    if public_mask is None:
        pub = np.zeros(partners.shape, bool)
        if public_images is not None:
            pub[:, 1:] = True
    else:
        pub = _np(public_mask, bool)
        if pub.any() and public_images is None:
            raise ValueError("public_mask marks public partners but no public_images were given")
    if pub.any():
        public = _np(public_images, np.float64).reshape(len(public_images), -1)
        rows, cols = np.nonzero(pub)
        known = np.zeros_like(b)
        np.add.at(known, rows, coeffs[rows, cols, None] * public[partners[rows, cols]])
        b -= known
    if num_private is None:
        num_private = int(partners[~pub].max()) + 1 if (~pub).any() else 0
    a = mixing_matrix(partners, coeffs, num_private, ~pub)
    s, ident, diag = solve_mixing(a, b, min_encodings=min_encodings, rank_tol=rank_tol)
    if max_noise_gain is not None:
        ident &= diag["noise_gain"] <= max_noise_gain
    if clamp:
        s = np.clip(s, 0.0, 1.0)
    diag.update(signed=bool(signed), public_partners=int(pub.sum()))
    images = torch.from_numpy(s.reshape(num_private, *shape).astype(np.float32))
    return DecodeResult(images, ident, diag)
