"""Image priors added to the matching objective, each weighted by an alpha.

Every regularizer takes one trial's images ``x`` [N, C, H, W] and a context holding what
the forward pass recorded (BatchNorm feature statistics) and what the trials share (their
mean image, for GradInversion's group consistency).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from adversary.attacks.registry import ConfigError, component_registry
from adversary.attacks.threat_model import Component
from fl_sim.threat import Capability

REGULARIZERS = component_registry("regularizer")


@dataclass
class RegContext:
    """Per-trial information a regularizer may use."""

    bn_features: list[tuple[Tensor, Tensor]] = field(default_factory=list)  # (mean, var) per BN layer
    bn_target: list[tuple[Tensor, Tensor]] | None = None
    bn_targets: dict[str, list[tuple[Tensor, Tensor]] | None] = field(default_factory=dict)
    group_mean: Tensor | None = None
    sign_center: Tensor | None = None  # InstaHide: signs flip around this centre
    input_stats: tuple[Tensor, Tensor] | None = None  # the model's input (mean, std), (1, C, 1, 1) each: public


class Regularizer(Component):
    def __call__(self, x: Tensor, ctx: RegContext) -> Tensor:
        raise NotImplementedError


@REGULARIZERS.register("tv")
class TotalVariation(Regularizer):
    """Anisotropic TV (mean absolute neighbour differences): natural images are piecewise smooth.

    ``space="input"`` takes it on the model's normalised input, (x - mean) / std, as Geiping et al. and
    breaching do: each channel's differences count in units of its spread, so a weight means the same on
    data sets of different contrast. ``border=True`` also counts the differences to a zero column right of
    and a zero row below the image (breaching's zero-padded convolution): in the input space that pulls
    those edges towards the data's mean colour. ``on_abs=True`` applies it to |x - c| (c: the centre
    InstaHide's random signs flip around, 0 when the inputs state none), for InstaHide whose sign flips
    make x itself rough.
    """

    SPACES = ("data", "input")

    def __init__(self, on_abs: bool = False, space: str = "data", border: bool = False) -> None:
        if space not in self.SPACES:
            raise ConfigError(f"regularizer 'tv': space {space!r} is not one of {', '.join(self.SPACES)}")
        if not isinstance(border, bool):
            raise ConfigError(f"regularizer 'tv': border must be true or false, got {border!r}")
        self.on_abs, self.space, self.border = on_abs, space, border

    def __call__(self, x: Tensor, ctx: RegContext) -> Tensor:
        if self.on_abs:
            x = (x - ctx.sign_center.to(x)).abs() if ctx.sign_center is not None else x.abs()
        if self.space == "input" and ctx.input_stats is not None:
            mean, std = ctx.input_stats
            x = (x - mean.to(x)) / std.to(x)
        if self.border:  # H x W differences each way, the last to the zero column right of and row below the image
            padded = torch.nn.functional.pad(x, (0, 1, 0, 1))
            dx = (padded[..., :-1, 1:] - padded[..., :-1, :-1]).abs().mean()
            dy = (padded[..., 1:, :-1] - padded[..., :-1, :-1]).abs().mean()
            return dx + dy
        dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
        dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
        return dx + dy


@REGULARIZERS.register("bn_prior")
class BatchNormPrior(Regularizer):
    """Yin et al. (2021): sum_l ||mean(x_l) - mu_l||_2 + ||var(x_l) - sigma_l^2||_2.

    Pulls the dummy batch's feature statistics (recorded by forward hooks on the BN layers)
    towards target statistics. ``source=None`` follows the attack's BN strategy; ``"exact"``
    or ``"proxy"`` pins the target and needs the matching grant.
    """

    def __init__(self, source: str | None = None) -> None:
        if source not in (None, "exact", "proxy", "infer"):
            raise ConfigError(f"regularizer 'bn_prior': source {source!r} is not one of exact, proxy, infer")
        self.source = source

    def describe(self) -> str:
        return f"regularizer 'bn_prior' with source {self.source!r}" if self.source else "regularizer 'bn_prior'"

    def requirements(self) -> set[Capability]:
        return {"exact": {Capability.BN_EXACT}, "proxy": {Capability.BN_PROXY}}.get(self.source or "", set())

    def __call__(self, x: Tensor, ctx: RegContext) -> Tensor:
        target = ctx.bn_targets.get(self.source) if self.source else ctx.bn_target
        if target is None:
            raise ConfigError(f"{self.describe()}: no BatchNorm target statistics (choose a bn strategy exact/proxy/infer)")
        if len(target) != len(ctx.bn_features):
            raise ValueError(f"bn_prior: {len(target)} target layers but {len(ctx.bn_features)} BN layers ran")
        loss = x.new_zeros(())
        for (m, v), (tm, tv) in zip(ctx.bn_features, target):
            loss = loss + torch.linalg.vector_norm(m - tm.to(m)) + torch.linalg.vector_norm(v - tv.to(v))
        return loss


@REGULARIZERS.register("l2")
class ImageNorm(Regularizer):
    """Mean squared pixel value: a weak prior against saturated, high-energy images."""

    def __call__(self, x: Tensor, ctx: RegContext) -> Tensor:
        return x.pow(2).mean()


@REGULARIZERS.register("group_consistency")
class GroupConsistency(Regularizer):
    """GradInversion (Yin et al., 2021): pull each trial towards the mean of all R trials.

    The trials run in lockstep; the group mean is treated as a constant each iteration.
    """

    def __call__(self, x: Tensor, ctx: RegContext) -> Tensor:
        if ctx.group_mean is None:
            return x.new_zeros(())
        return (x - ctx.group_mean.to(x)).pow(2).mean()
