"""InstaHide (Huang et al. 2020): MixUp, then a fresh random sign flip per encoded image.

- ``variant="intra"`` (the paper's Intra-InstaHide): partners from the client's
  own partition, labels mixed with the same coefficients, exactly as MixUp.
- ``variant="inter"``: the ``k - 1`` partners come from a public dataset
  (``public``, default ``cifar100-sample``; all its train and test images, loaded
  at the run's ``data.image_size``; it must have the private images' shape). Only
  the private label counts (paper footnote 2): ``y~ = lambda_1 * onehot(y)``.

Then ``x~ = sigma o mix`` with ``sigma`` uniform in {-1, +1}^d, drawn afresh for
every encoded image of every step. As in InstaHide's own code, pixels are first
centred to [-1, 1] (``center=True``: the mix is of ``2x - 1``), so the signs hide
information: ``|x~|`` no longer determines the mix. With ``center=False`` the
mix of [0, 1] images is sign-flipped, and ``|x~|`` is exactly the MixUp encoding
(a weaker variant, kept for comparison). The model's own Normalize layer still
applies to ``x~`` (which lies in [-1, 1]).

Keys (ground-truth sidecar only): ``keys/partners`` and ``keys/coeffs`` as in
:mod:`clients.defenses.mixup` (for ``inter``, columns 1.. index the public set),
and ``keys/signs`` (N, C, H, W) int8.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from clients.defenses.base import BuildContext, EncodeContext, config_error
from clients.defenses.mixup import MixParams, MixUp, mix, sample_coefficients, sample_partners
from clients.defenses.registry import register_defense


class InstaHideParams(MixParams):
    name: Literal["instahide"] = "instahide"
    variant: Literal["intra", "inter"] = "intra"
    public: str = Field("cifar100-sample", min_length=1, description="public dataset for variant='inter'")
    center: bool = Field(True, description="mix pixels centred to [-1, 1], as InstaHide's code does")


def random_signs(shape: tuple[int, ...], rng: torch.Generator) -> Tensor:
    return (torch.randint(0, 2, shape, generator=rng, dtype=torch.int8) * 2 - 1).to(torch.int8)


@register_defense("instahide", kind="encoder", params=InstaHideParams)
class InstaHide(MixUp):
    def __init__(self, params: InstaHideParams, context: BuildContext | None = None) -> None:
        super().__init__(params, context)
        self.variant = params.variant
        self.public_name = params.public
        self.public_x: Tensor | None = None
        self.center = params.center
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
        if self.center:  # coefficients sum to 1, so mixing 2x - 1 is 2 * mix - 1
            mixed = 2 * mixed - 1
        signs = random_signs(tuple(mixed.shape), rng)
        keys["keys/signs"] = signs.numpy()
        return signs.to(mixed.dtype) * mixed, labels, keys


def load_public_images(name: str, context: BuildContext | None) -> Tensor:
    from fl_sim.data import DataError, load_dataset

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
