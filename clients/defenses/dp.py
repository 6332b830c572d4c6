"""DP-SGD (Abadi et al. 2016) on the client: per-example clipping plus noise, per gradient step.

For a batch of N examples: per-example gradients g_i (``torch.func``: vmap of
grad over single examples, through the model's own forward), each clipped to
L2 norm ``clip`` (C) over all parameters together (g_i * min(1, C / (||g_i|| + 1e-6)),
as opacus), summed, noise added, divided by N:

    g = (sum_i clip(g_i) + z) / N,   z ~ N(0, (sigma C)^2 I)      (mechanism="gaussian")
                                      z ~ Laplace(0, b = sigma C)  (mechanism="laplace")

This replaces the gradient of the FedSGD step and of every local FedAvg step.
Models with BatchNorm are rejected (per-example gradients are undefined when
examples share batch statistics); use a model with ``norm="group"`` or ``"none"``.

Accounting (Gaussian only): opacus' ``RDPAccountant``, one ``step(noise_multiplier=sigma,
sample_rate=batch_size / partition_size)`` per gradient step, its history kept in
the client's ``context.state`` across rounds; ``dp-epsilon`` (at ``delta``) goes into
the reply metrics. The batches are shuffled slices, not Poisson samples, so the
number is the usual approximation. The Laplace mechanism is not accounted:
:meth:`DP.epsilon` returns None and no ``dp-epsilon`` is reported.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from flwr.app import ConfigRecord
from opacus.accountants import RDPAccountant
from pydantic import Field
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from clients.defenses.base import BuildContext, Defense, RoundContext, config_error
from clients.defenses.registry import register_defense
from fl_sim.config import DefenseParams

STATE_KEY = "fl-sim-dp-accountant"


class DPParams(DefenseParams):
    name: Literal["dp"] = "dp"
    noise_multiplier: float = Field(..., ge=0, le=1e6, description="sigma: noise std in units of clip")
    clip: float = Field(1.0, gt=0, description="C: per-example L2 clipping norm")
    mechanism: Literal["gaussian", "laplace"] = "gaussian"
    delta: float = Field(1e-5, gt=0, lt=1, description="delta at which epsilon is reported")


def per_example_gradients(
    model: nn.Module, x: Tensor, y: Tensor, params: dict[str, nn.Parameter]
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-example losses (N,) and gradients {name: (N, *shape)} for ``params``."""
    detached = {k: v.detach() for k, v in params.items()}
    buffers = dict(model.named_buffers())

    def loss_one(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    grads, losses = vmap(grad_and_value(loss_one), in_dims=(None, 0, 0), randomness="different")(detached, x, y)
    return losses, grads


def clip_and_sum(grads: dict[str, Tensor], clip: float) -> tuple[dict[str, Tensor], Tensor]:
    """Sum over examples of each example's gradient clipped to L2 norm ``clip``; also the norms."""
    norms = torch.sqrt(sum(g.reshape(len(g), -1).pow(2).sum(1) for g in grads.values()))
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)
    summed = {k: torch.einsum("n,n...->...", factor.to(g.dtype), g) for k, g in grads.items()}
    return summed, norms


def sample_noise(shape: torch.Size, scale: float, mechanism: str, rng: torch.Generator) -> Tensor:
    if mechanism == "gaussian":
        return torch.randn(shape, generator=rng) * scale
    u = torch.rand(shape, generator=rng, dtype=torch.float64) - 0.5  # in [-0.5, 0.5)
    return (scale * torch.sign(u) * -(torch.log1p(-2 * u.abs()).clamp(min=-50.0))).to(torch.float32)


@register_defense("dp", kind="step", params=DPParams)
class DP(Defense):
    def __init__(self, params: DPParams, context: BuildContext | None = None) -> None:
        self.sigma = params.noise_multiplier
        self.clip = params.clip
        self.mechanism = params.mechanism
        self.delta = params.delta
        if context is not None and any(isinstance(m, _BatchNorm) for m in context.model.modules()):
            raise config_error(
                context.key,
                f"dp needs per-example gradients, which BatchNorm models ({context.config.model.name}) do not have; "
                "use model.norm=group or none (or a model without BatchNorm)",
            )

    def gradient(self, model: nn.Module, x: Tensor, y: Tensor, params: dict[str, nn.Parameter], rng: torch.Generator):
        model.train()
        losses, grads = per_example_gradients(model, x, y, params)
        summed, _ = clip_and_sum(grads, self.clip)
        n = len(x)
        out = {}
        for k, g in summed.items():
            noise = sample_noise(g.shape, self.sigma * self.clip, self.mechanism, rng).to(g.device, g.dtype)
            out[k] = (g + noise) / n
        return float(losses.mean().detach()), out, {}

    # --- accounting -------------------------------------------------------------------------
    def _accountant(self, state: Any):
        acc = RDPAccountant()
        if state is not None and STATE_KEY in state:
            rec = state[STATE_KEY]
            acc.history = [(float(s), float(q), int(n)) for s, q, n in zip(rec["sigma"], rec["rate"], rec["steps"])]
        return acc

    def epsilon(self, state: Any) -> float | None:
        """Privacy spent so far by this client (None: Laplace is not accounted)."""
        if self.mechanism != "gaussian":
            return None
        acc = self._accountant(state)
        if not acc.history:
            return 0.0
        if self.sigma == 0:
            return float("inf")
        return float(acc.get_epsilon(self.delta))

    def round_metrics(self, context: RoundContext) -> dict[str, float]:
        if self.mechanism != "gaussian" or context.state is None:
            return {}

        acc = self._accountant(context.state)
        rate = min(1.0, context.batch_size / max(context.partition_size, 1))
        for _ in range(context.steps):
            acc.step(noise_multiplier=self.sigma, sample_rate=rate)
        context.state[STATE_KEY] = ConfigRecord(
            {
                "sigma": [float(s) for s, _, _ in acc.history],
                "rate": [float(q) for _, q, _ in acc.history],
                "steps": [int(n) for _, _, n in acc.history],
            }
        )
        eps = self.epsilon(context.state)
        return {"dp-epsilon": eps, "dp-steps": sum(int(n) for _, _, n in acc.history)}
