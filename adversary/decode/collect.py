"""Assemble encodings and their keys across T epochs from ground-truth sidecar steps.

The sidecar (:mod:`fl_sim.ground_truth`) stores, per local step of an encoding defense:
``encoded`` (N, C, H, W), ``keys/partners`` (N, k; column 0 the private image's own dataset
index), ``keys/coeffs`` (N, k), ``keys/signs`` (InstaHide only), ``images``, ``labels`` and
``indices``. :func:`collect_encodings` concatenates many steps (e.g. every step of one client
over T epochs), maps private dataset indices to compact ids ``0..P-1`` and gathers the private
ground truth images for evaluation. The encodings can be the exact ones (the paper's upper
bound) or ones reconstructed by a gradient-inversion attack (``encodings=``).

Evaluation-side helper: the keys come from the sidecar. An attacker with known keys (the paper's
granted setting) uses only ``partners``/``coeffs``, never ``truth``/``signs``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class EncodingSet:
    encodings: torch.Tensor  # (M, C, H, W) float32, as observed (signed for InstaHide)
    partners: np.ndarray  # (M, k) int64: compact private ids; public indices where public_mask
    coeffs: np.ndarray  # (M, k) float32
    public_mask: np.ndarray  # (M, k) bool: partner is a public image (Inter-InstaHide columns 1..)
    private_index: np.ndarray  # (P,) dataset index of each compact private id
    signed: bool  # keys/signs present: decode from |x~|
    truth: torch.Tensor | None  # (P, C, H, W) ground truth private images where known (else zeros)
    truth_known: np.ndarray  # (P,) bool: truth[i] came from a step's ``images``
    origin: np.ndarray  # (M, 2) int64: (step number, row) of each encoding

    @property
    def num_private(self) -> int:
        return len(self.private_index)

    def decode_args(self, public_images: Any = None) -> dict[str, Any]:
        """Keyword arguments for :func:`adversary.decode.decode_with_keys` (the granted keys only)."""
        return dict(
            encodings=self.encodings, partners=self.partners, coeffs=self.coeffs, num_private=self.num_private,
            public_images=public_images if self.public_mask.any() else None, signed=self.signed,
            public_mask=self.public_mask if self.public_mask.any() else None,
        )


def _steps_of(source: Any) -> list[Mapping[str, np.ndarray]]:
    if isinstance(source, Mapping):
        return [source]
    out: list[Mapping[str, np.ndarray]] = []
    for item in source:
        steps = getattr(item, "steps", None)  # fl_sim.ground_truth.PrivateBatch
        out.extend(steps if steps is not None else [item])
    return out


def collect_encodings(
    steps: Iterable[Any] | Mapping[str, np.ndarray],
    *,
    encodings: Sequence[Any] | Any | None = None,
    public_partners: bool = False,
    signed: bool | None = None,
) -> EncodingSet:
    """Concatenate the encoding steps of one client (T epochs) into one :class:`EncodingSet`.

    - ``steps``: sidecar step dicts, or :class:`~fl_sim.ground_truth.PrivateBatch` objects
      (their ``steps`` are used), or one step dict. Steps without ``keys/partners`` are skipped.
    - ``encodings``: replace the exact ``encoded`` arrays, e.g. by gradient-inversion results:
      one array per kept step (same row order), or one (M, C, H, W) array for all.
    - ``public_partners``: Inter-InstaHide (columns 1.. of ``keys/partners`` index the public set).
    - ``signed``: default: true iff the steps carry ``keys/signs`` (InstaHide).
    """
    kept = [(i, s) for i, s in enumerate(_steps_of(steps)) if "keys/partners" in s]
    if not kept:
        raise ValueError("no step with encoding keys ('keys/partners'): was an encoding defense configured?")
    partners = np.concatenate([np.asarray(s["keys/partners"], np.int64) for _, s in kept])
    coeffs = np.concatenate([np.asarray(s["keys/coeffs"], np.float32) for _, s in kept])
    origin = np.concatenate([np.stack([np.full(len(s["keys/partners"]), i), np.arange(len(s["keys/partners"]))], 1) for i, s in kept])
    if encodings is None:
        enc = np.concatenate([np.asarray(s["encoded"], np.float32) for _, s in kept])
    elif isinstance(encodings, (list, tuple)):
        if len(encodings) != len(kept):
            raise ValueError(f"{len(encodings)} encoding arrays for {len(kept)} encoding steps")
        enc = np.concatenate([np.asarray(e.detach().cpu() if isinstance(e, torch.Tensor) else e, np.float32) for e in encodings])
    else:
        enc = np.asarray(encodings.detach().cpu() if isinstance(encodings, torch.Tensor) else encodings, np.float32)
    if len(enc) != len(partners):
        raise ValueError(f"{len(enc)} encodings but keys for {len(partners)}")
    public_mask = np.zeros(partners.shape, bool)
    if public_partners:
        public_mask[:, 1:] = True
    private_index, compact = np.unique(partners[~public_mask], return_inverse=True)
    mapped = partners.copy()
    mapped[~public_mask] = compact
    if signed is None:
        signed = any("keys/signs" in s for _, s in kept)
    # Ground truth private images (evaluation only) from each step's own images.
    truth = None
    known = np.zeros(len(private_index), bool)
    for _, s in kept:
        if "images" not in s or "indices" not in s:
            continue
        imgs = np.asarray(s["images"], np.float32)
        if truth is None:
            truth = np.zeros((len(private_index), *imgs.shape[1:]), np.float32)
        pos = np.searchsorted(private_index, np.asarray(s["indices"], np.int64))
        truth[pos] = imgs
        known[pos] = True
    return EncodingSet(
        encodings=torch.from_numpy(enc), partners=mapped, coeffs=coeffs, public_mask=public_mask,
        private_index=private_index, signed=bool(signed), truth=None if truth is None else torch.from_numpy(truth),
        truth_known=known, origin=origin,
    )
