"""Model vetting: a client inspects the model it receives and refuses (or flags) a suspicious one.

A malicious server attacks by what it sends (:mod:`adversary.malicious`); this defense
looks at exactly that, before the client trains, with checks that need nothing but
the received tensors, the last model the client saw and a few of its own images:

- ``architecture``: the instruction changes the agreed architecture (a server-defined
  block, or tensors the client does not know). Score 1 or 0.
- ``duplicate_rows``: the largest fraction, over the weight matrices of Linear
  layers, of rows that are all zero or exact copies of another row (class fishing
  zeroes the classifier rows of every other class; an imprint block repeats rows).
  Honest weights, random or trained, have none.
- ``sparse_units``: on the probe images, the largest fraction, over Linear layers
  before the classifier, of units that fire (pre-activation > 0) for some but at
  most ``sparse_fraction`` of the probe images. Trap weights make most units fire for
  one image or two; honest units fire for a good share of the images or none (dead).
- ``row_sign_skew``: for a Linear layer that sees the raw input (the model's first layer
  after Normalize/Flatten, or an inserted block's), ``|2 f - 1|`` with ``f`` the fraction
  of its weight rows whose entries sum to less than zero. Trap weights give every row as
  many negative as positive entries, the negative ones scaled up, so nearly every row
  sums below zero (an imprint block's rows all sum above); honest rows go either way.
- ``classifier_bias``: spread (max - min) of the classifier's bias. Fishing lifts
  the other classes' biases far above any an honest model learns.
- ``norm_ratio``: the largest ratio, either way, of a weight tensor's L2 norm to the
  one the client last received (skipped the first time a client takes part). Replacing
  a layer (trap weights) or zeroing rows changes its norm many-fold; training does not.

``action = "refuse"``: the client sends no update for a flagged model (it reports
zero examples, so the round's aggregate ignores it); ``"flag"``: it trains anyway and
reports. Either way the reply's metrics carry the scores (``vetting/<check>``), the
checks that fired (``vetting-flag/<check>``), ``vetting-flagged`` and ``vetting-refused``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from clients.defenses.base import BuildContext, Defense, VetContext, VetReport
from clients.defenses.registry import register_defense
from fl_sim.config import DefenseParams

Check = Callable[[VetContext, "VettingParams"], float]
CHECKS: dict[str, tuple[Check, Callable[["VettingParams"], float]]] = {}


def _check(name: str, threshold: Callable[["VettingParams"], float]) -> Callable[[Check], Check]:
    def wrap(fn: Check) -> Check:
        CHECKS[name] = (fn, threshold)
        return fn

    return wrap


class VettingParams(DefenseParams):
    name: Literal["vetting"] = "vetting"
    action: Literal["refuse", "flag"] = "refuse"
    checks: list[str] = Field(default_factory=lambda: list(CHECKS), description="which checks run")
    max_duplicate_rows: float = Field(0.25, ge=0, le=1, description="duplicate_rows flags above this fraction")
    sparse_fraction: float = Field(0.1, gt=0, lt=1, description="a unit firing for at most this share of probe images is sparse")
    max_sparse_units: float = Field(0.5, ge=0, le=1, description="sparse_units flags above this fraction of units")
    max_row_sign_skew: float = Field(0.3, ge=0, le=1, description="row_sign_skew flags above this")
    max_bias_spread: float = Field(10.0, gt=0, description="classifier_bias flags above this spread")
    max_norm_ratio: float = Field(3.0, gt=1, description="norm_ratio flags above this ratio (either way)")
    probe_images: int = Field(32, ge=2, le=4096, description="own images the sparse_units check runs")

    @field_validator("checks")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = [c for c in value if c not in CHECKS]
        if unknown:
            raise ValueError(f"checks: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(CHECKS)}")
        return value


def _linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def _agreed_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Linear layers of the agreed model (an inserted block's, registered after it, left out)."""
    return _linears(getattr(model, "body", model))


@_check("architecture", lambda p: 0.5)
def architecture_changed(ctx: VetContext, params: VettingParams) -> float:
    unknown = set(ctx.received) - ctx.agreed_keys
    return 1.0 if ctx.architecture or unknown else 0.0


@_check("duplicate_rows", lambda p: p.max_duplicate_rows)
def duplicate_rows(ctx: VetContext, params: VettingParams) -> float:
    worst = 0.0
    for _, layer in _linears(ctx.model):
        w = layer.weight.detach()
        if w.shape[0] < 2:
            continue
        zero = (w == 0).all(dim=1)
        _, inverse, counts = torch.unique(w, dim=0, return_inverse=True, return_counts=True)
        repeated = counts[inverse] > 1
        worst = max(worst, float((zero | repeated).float().mean()))
    return worst


@_check("sparse_units", lambda p: p.max_sparse_units)
def sparse_units(ctx: VetContext, params: VettingParams) -> float:
    layers = _agreed_linears(ctx.model)[:-1]  # the classifier's logits are not units
    if not layers or len(ctx.probe) < 2:
        return 0.0
    outputs: list[Tensor] = []
    handles = [layer.register_forward_hook(lambda _m, _i, out: outputs.append(out.detach())) for _, layer in layers]
    was_training = ctx.model.training
    try:
        ctx.model.eval()
        with torch.no_grad():
            ctx.model(ctx.probe)
    finally:
        ctx.model.train(was_training)
        for h in handles:
            h.remove()
    n = len(ctx.probe)
    limit = max(1, int(params.sparse_fraction * n))
    worst = 0.0
    for out in outputs:
        fires = (out.reshape(n, -1) > 0).sum(dim=0)
        worst = max(worst, float(((fires > 0) & (fires <= limit)).float().mean()))
    return worst


def _input_linears(model: nn.Module) -> list[nn.Linear]:
    """Linear layers applied to the raw (flattened) input: an inserted block's ``enc`` and, when
    no convolution comes first, the model's first Linear (unless that is the classifier)."""
    layers = _agreed_linears(model)
    classifier = layers[-1][1] if layers else None
    found = [m.enc for m in model.children() if isinstance(getattr(m, "enc", None), nn.Linear)]
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            break
        if isinstance(module, nn.Linear) and all(module is not f for f in found):
            if module is not classifier:
                found.append(module)
            break
    return found


@_check("row_sign_skew", lambda p: p.max_row_sign_skew)
def row_sign_skew(ctx: VetContext, params: VettingParams) -> float:
    worst = 0.0
    for layer in _input_linears(ctx.model):
        w = layer.weight.detach()
        if w.shape[0] < 8:
            continue
        negative = (w.double().sum(dim=1) < 0).double().mean()
        worst = max(worst, float(abs(2 * negative - 1)))
    return worst


@_check("classifier_bias", lambda p: p.max_bias_spread)
def classifier_bias(ctx: VetContext, params: VettingParams) -> float:
    layers = _agreed_linears(ctx.model)
    if not layers or layers[-1][1].bias is None:
        return 0.0
    b = layers[-1][1].bias.detach()
    return float(b.max() - b.min())


@_check("norm_ratio", lambda p: p.max_norm_ratio)
def norm_ratio(ctx: VetContext, params: VettingParams) -> float:
    if not ctx.previous:
        return 1.0
    worst = 1.0
    for key, old in ctx.previous.items():
        new = ctx.received.get(key)
        if new is None or not key.endswith("weight") or new.dim() < 2 or new.shape != old.shape:
            continue
        a, b = float(new.double().norm()), float(old.double().norm())
        if a == 0.0 or b == 0.0:
            worst = max(worst, float("inf") if a != b else 1.0)
            continue
        worst = max(worst, a / b, b / a)
    return worst


@register_defense("vetting", kind="vet", params=VettingParams)
class Vetting(Defense):
    def __init__(self, params: VettingParams, context: BuildContext | None = None) -> None:
        self.params = params

    def vet(self, context: VetContext) -> VetReport:
        scores, flagged = {}, []
        for name in self.params.checks:
            fn, threshold = CHECKS[name]
            scores[name] = fn(context, self.params)
            if scores[name] > threshold(self.params):
                flagged.append(name)
        return VetReport(scores, flagged, refuse=bool(flagged) and self.params.action == "refuse")
