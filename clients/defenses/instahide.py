"""InstaHide (Huang et al. 2020): MixUp, then a fresh random sign flip per encoded image.

- ``variant="intra"`` (the paper's Intra-InstaHide): partners from the client's
  own partition, labels mixed with the same coefficients, exactly as MixUp.
- ``variant="inter"``: the ``k - 1`` partners come from a public dataset
  (``public``, default ``cifar100-sample``; all its train and test images, loaded
  at the run's ``data.image_size``; it must have the private images' shape). Only
  the private label counts (paper footnote 2): ``y~ = lambda_1 * onehot(y)``.

Then the signs of the mix are flipped around a per-channel centre ``c``:
``x~ = c + sigma o (mix - c)`` with ``sigma`` uniform in {-1, +1}^d, drawn afresh
for every encoded image of every step. ``center`` chooses ``c``:

- ``"mean"`` (default, as InstaHide's own code): the dataset mean, i.e. the mean of
  the model's Normalize layer. InstaHide normalizes images before mixing and
  flipping, so after the model's Normalize the network sees ``sigma o z`` with ``z``
  the mix of normalized images, and clean (normalized) test images stay in the
  training distribution: the model is evaluated on plain test images, as there.
- ``"half"``: ``c = 0.5`` (pixels centred to [-1, 1] before flipping, rescaled).
- ``"zero"``: ``c = 0``: the mix of [0, 1] images is sign-flipped and ``|x~|`` is
  exactly the MixUp encoding (a weaker variant, kept for comparison).

``|x~ - c| = |mix - c|`` whatever the signs: that is what an attacker without the
signs can hope to recover (Carlini et al. work on such magnitudes).

Keys (ground-truth sidecar only): ``keys/partners`` and ``keys/coeffs`` as in
:mod:`clients.defenses.mixup` (for ``inter``, columns 1.. index the public set),
and ``keys/signs`` (N, C, H, W) int8.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from clients.defenses.base import BuildContext, EncodeContext, config_error
from clients.defenses.mixup import MixParams, MixUp, mix, sample_coefficients, sample_partners
from clients.defenses.registry import register_defense
from fl_sim.data import DataError, load_dataset
from fl_sim.models import Normalize


class InstaHideParams(MixParams):
    name: Literal["instahide"] = "instahide"
    variant: Literal["intra", "inter"] = "intra"
    public: str = Field("cifar100-sample", min_length=1, description="public dataset for variant='inter'")
    center: Literal["mean", "half", "zero"] = Field("mean", description="value the signs flip around (InstaHide's code: the dataset mean)")

    @field_validator("center", mode="before")
    @classmethod
    def _legacy_bool(cls, value: Any) -> Any:
        # Earlier configs said center = true (pixels centred to [-1, 1]) / false (no centring).
        return {True: "half", False: "zero"}.get(value, value) if isinstance(value, bool) else value


def sign_center(center: str, model: nn.Module | None, channels: int) -> Tensor:
    """The per-channel centre (1, C, 1, 1) the signs flip around; ``"mean"`` reads the model's Normalize."""
    if center == "zero":
        return torch.zeros(1, channels, 1, 1)
    if center == "half":
        return torch.full((1, channels, 1, 1), 0.5)
    norm = next((m for m in model.modules() if isinstance(m, Normalize)), None) if model is not None else None
    if norm is None:
        raise ValueError("instahide center='mean' needs a model with a Normalize layer (or use center='half')")
    return norm.mean.detach().cpu().reshape(1, -1, 1, 1).clone()


def random_signs(shape: tuple[int, ...], rng: torch.Generator) -> Tensor:
    return (torch.randint(0, 2, shape, generator=rng, dtype=torch.int8) * 2 - 1).to(torch.int8)


@register_defense("instahide", kind="encoder", params=InstaHideParams)
class InstaHide(MixUp):
    def __init__(self, params: InstaHideParams, context: BuildContext | None = None, *, model: nn.Module | None = None) -> None:
        super().__init__(params, context)
        self.variant = params.variant
        self.public_name = params.public
        self.public_x: Tensor | None = None
        self.center_name = params.center
        channels = context.input_shape[0] if context is not None else 1
        try:
            self.center = sign_center(params.center, model if model is not None else (context.model if context else None), channels)
        except ValueError as exc:
            raise config_error(f"{context.key if context else 'instahide'}.center", str(exc)) from None
        if self.variant == "inter":
            self.public_x = load_public_images(params.public, context)

    def encode(self, x: Tensor, y_onehot: Tensor, rng: torch.Generator, context: EncodeContext):
        if self.public_x is None:
            mixed, labels, keys = super().encode(x, y_onehot, rng, context)
        else:
            n = len(x)
            partners = sample_partners(context.indices, np.arange(len(self.public_x)), self.k - 1, rng, exclude_self=False)
            coeffs = sample_coefficients(n, self.k, self.max_coeff, rng).to(torch.float32)
            images = torch.cat([x[:, None], self.public_x[torch.as_tensor(partners)]], dim=1)
            mixed = mix(images, coeffs)
            labels = coeffs[:, :1] * y_onehot  # only the private label counts
            keys = {
                "keys/partners": np.concatenate([np.asarray(context.indices, np.int64)[:, None], partners], axis=1),
                "keys/coeffs": coeffs.numpy(),
            }
        signs = random_signs(tuple(mixed.shape), rng)
        keys["keys/signs"] = signs.numpy()
        c = self.center.to(mixed.dtype)
        if c.shape[1] != mixed.shape[1]:
            c = c.expand(1, mixed.shape[1], 1, 1)
        return c + signs.to(mixed.dtype) * (mixed - c), labels, keys


def load_public_images(name: str, context: BuildContext | None) -> Tensor:
    key = context.key if context is not None else "instahide"
    cfg = context.config if context is not None else None
    try:
        ds = load_dataset(name, seed=cfg.seed if cfg else 0, image_size=cfg.data.image_size if cfg else None)
    except DataError as exc:
        raise config_error(f"{key}.public", str(exc).split(": ", 1)[-1]) from None
    if context is not None and ds.input_shape != tuple(context.input_shape):
        raise config_error(
            f"{key}.public",
            f"public images of {name!r} have shape {ds.input_shape} but the private images have "
            f"{tuple(context.input_shape)}; choose a public set with the same shape (e.g. mnist-sample or "
            f"fashion-mnist-sample for 1x28x28, cifar100-sample for 3x32x32)",
        )
    return torch.cat([ds.train_x, ds.test_x])
