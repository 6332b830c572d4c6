"""Evaluator-side scores of a keyless decode against the ground-truth keys (never given to the attacker).

- :func:`cluster_purity`: for each recovered cluster (encoding ids), the share of its members
  that contain its majority private image; pooled over clusters (weighted by size). ``chance`` is
  the same purity for random clusters of the same sizes (the floor to compare with: with k of P
  images per encoding, a random cluster is already ~k/P pure, more for small clusters).
- :func:`cluster_jaccard`: one-to-one (Hungarian) matching of clusters to private images by the
  Jaccard index of member sets; mean over the private images (missing clusters count 0).
- :func:`similarity_auc`: how well a pairwise similarity separates encoding pairs that share a
  private image from pairs that do not (ROC AUC; 0.5 = chance).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def membership(partners: np.ndarray, num_private: int, private_mask: np.ndarray | None = None) -> np.ndarray:
    """(M, P) bool: encoding j contains private image i."""
    partners = np.asarray(partners, np.int64)
    mask = np.ones(partners.shape, bool) if private_mask is None else np.asarray(private_mask, bool)
    out = np.zeros((len(partners), num_private), bool)
    rows = np.broadcast_to(np.arange(len(partners))[:, None], partners.shape)
    out[rows[mask], partners[mask]] = True
    return out


def _purity(clusters: list[np.ndarray], member: np.ndarray) -> float:
    total = sum(len(c) for c in clusters)
    if total == 0:
        return float("nan")
    return float(sum(member[c].sum(0).max() for c in clusters if len(c)) / total)


def cluster_purity(clusters: list[np.ndarray], member: np.ndarray, *, draws: int = 50, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    m = len(member)
    chance = [_purity([rng.choice(m, len(c), replace=False) for c in clusters], member) for _ in range(draws)]
    return {"purity": _purity(clusters, member), "chance": float(np.mean(chance)), "chance_std": float(np.std(chance))}


def cluster_jaccard(clusters: list[np.ndarray], member: np.ndarray) -> dict[str, float]:
    p = member.shape[1]
    if not clusters:
        return {"jaccard": 0.0, "matched": 0}
    jac = np.zeros((len(clusters), p))
    for i, c in enumerate(clusters):
        mask = np.zeros(len(member), bool)
        mask[c] = True
        inter = (member & mask[:, None]).sum(0)
        union = (member | mask[:, None]).sum(0)
        jac[i] = inter / np.maximum(union, 1)
    rows, cols = linear_sum_assignment(-jac)
    return {"jaccard": float(jac[rows, cols].sum() / p), "matched": int(len(rows)), "assignment": dict(zip(cols.tolist(), rows.tolist()))}


def similarity_auc(sim: np.ndarray, member: np.ndarray) -> float:
    share = (member.astype(np.int64) @ member.T.astype(np.int64)) > 0
    iu = np.triu_indices(len(sim), 1)
    s, y = sim[iu], share[iu]
    if y.all() or not y.any():
        return float("nan")
    ranks = np.empty(len(s))
    ranks[np.argsort(s, kind="mergesort")] = np.arange(1, len(s) + 1)
    n1 = y.sum()
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * (len(y) - n1)))
