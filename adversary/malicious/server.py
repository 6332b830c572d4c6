"""Malicious-server strategies inside the federation: what the server sends.

A strategy decides, per round, what the server broadcasts for training instead of
the honest global model (``None``: the honest one). The server keeps aggregating
its honest model from the agreed tensors; whatever else clients return (an
inserted block's gradients) only feeds the attack. Chosen by name
(``adversary.options.strategy`` of the ``malicious-server`` role).

Each strategy declares the server control it needs in the capabilities of
:mod:`fl_sim.threat` (the same vocabulary the attacks use); :func:`build_strategy`
checks them against what the deployment grants before the run starts.

- ``trap-weights`` (weights only): trap rows on the first Linear layer.
- ``fishing`` (weights only): the classifier edited so one class dominates the gradient.
- ``imprint`` (architecture control): an input block binning images by brightness,
  its thresholds from public data (by default the server's own evaluation split).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from adversary.attacks.threat_model import Component, check_requirements
from adversary.malicious.fishing import fish, last_linear
from adversary.malicious.imprint import brightness_thresholds, imprint_weights
from adversary.malicious.trap_weights import first_linear_layer, trap_weights_
from fl_sim.models.server_defined import ARCHITECTURE_KEY, architecture_spec
from fl_sim.registry import Registry
from fl_sim.threat import Capability, ThreatModel, ThreatModelError

IMPRINT_BLOCK = "input_block"  # the inserted block's name: its tensors travel as input_block.*


@dataclass
class Broadcast:
    """What the server sends for training in one round in place of the honest model."""

    state: dict[str, Tensor]  # the agreed tensors (possibly altered) plus any inserted block's
    config: dict[str, Any] = field(default_factory=dict)  # extra instruction config (e.g. the architecture)
    info: dict[str, Any] = field(default_factory=dict)  # the strategy's choices, for the run directory


@dataclass(frozen=True)
class ServerView:
    """What the server knows when it builds a strategy: the task it runs and its own data."""

    input_shape: tuple[int, int, int]
    num_classes: int
    batch_size: int
    images_per_update: int  # batch size x local steps the server asks for
    public_images: Callable[[str], Tensor]  # "test" (its evaluation split) or a dataset name -> images in [0, 1]
    seed: int = 0


class MaliciousServerError(ValueError):
    """A manipulation that cannot run in this deployment (control, model, options); one line."""


class ServerStrategy(Protocol):
    name: str
    requires: frozenset[Capability]

    def broadcast(self, round: int, model: nn.Module) -> Broadcast | None:
        """What to send this round (``model`` holds the honest global weights); None: the honest model."""
        ...

    # Optional: ``observe(round, model, gradient, examples_per_step)`` sees each honest round's mean
    # gradient (the server computes it anyway) before the next broadcast.


STRATEGIES = Registry("malicious-server strategy", error=MaliciousServerError, label=True)


class _Rounds(Component):
    """Manipulate only ``rounds`` (all rounds when empty)."""

    rounds: list[int]

    def describe(self) -> str:
        return self.name

    def active(self, round: int) -> bool:
        return not self.rounds or round in self.rounds


@STRATEGIES.register("trap-weights")
class TrapWeightsServer(_Rounds):
    """Boenisch et al. 2023: trap weights on the first Linear layer (works on the unmodified architecture)."""

    requires = frozenset({Capability.WEIGHTS_CONTROL})  # the first layer must be nn.Linear with a bias

    def __init__(self, *, view: ServerView, model: nn.Module, rounds: list[int] | None = None, scale: float = 1.05,
                 seed: int = 0) -> None:
        try:
            first_linear_layer(model)
        except ValueError as exc:
            raise MaliciousServerError(f"adversary.options.strategy: {exc} (use model.name=mlp)") from None
        if scale <= 1:
            raise MaliciousServerError(f"adversary.options.scale: must be > 1, got {scale}")
        self.view, self.rounds, self.scale, self.seed = view, list(rounds or []), float(scale), int(seed)

    def broadcast(self, round: int, model: nn.Module) -> Broadcast | None:
        if not self.active(round):
            return None
        trapped = trap_weights_(copy.deepcopy(model), self.view.input_shape, scale=self.scale, seed=self.seed + round)
        return Broadcast(trapped.state_dict(), info={"scale": self.scale, "seed": self.seed + round})


@STRATEGIES.register("fishing")
class FishingServer(_Rounds):
    """Wen et al. 2022: the classifier makes one target class dominate the gradient.

    ``target``: a class; ``"cycle"`` (round r fishes class (r - 1) mod classes, so a run
    walks through every class); or ``"auto"`` (default): the rarest class present in the
    last honest round's updates, its label counts estimated from the classifier's bias
    gradient as ``n_c = B (p_c - db_c)`` with ``p_c`` the model's mean prediction on the
    server's public images (Wainakh et al.'s label leakage); a rare class makes a batch
    likely to hold a single image of it. Without an honest round yet, class 0.

    ``recovery`` (how the server inverts the fished gradient): ``"optimize"`` runs the
    optimization attack (``adversary.preset``); ``"analytic"`` reads a single fished image
    off a first fully connected layer (``dW_i / db_i``, exact); ``"auto"`` (default) takes
    the analytic route where it applies (one image, a first Linear layer) and optimizes
    otherwise."""

    requires = frozenset({Capability.WEIGHTS_CONTROL})  # the last layer must be nn.Linear with a bias

    def __init__(self, *, view: ServerView, model: nn.Module, rounds: list[int] | None = None,
                 target: int | str = "auto", bias_boost: float = 50.0, public: str = "test",
                 recovery: str = "auto") -> None:
        try:
            last_linear(model)
        except ValueError as exc:
            raise MaliciousServerError(f"adversary.options.strategy: {exc}") from None
        named = target in ("cycle", "auto")
        if not (named or (isinstance(target, int) and not isinstance(target, bool) and 0 <= target < view.num_classes)):
            raise MaliciousServerError(f"adversary.options.target: a class in [0, {view.num_classes}), 'auto' or 'cycle', "
                                       f"got {target!r}")
        if bias_boost <= 0:
            raise MaliciousServerError(f"adversary.options.bias_boost: must be > 0, got {bias_boost}")
        if recovery not in ("auto", "optimize", "analytic"):
            raise MaliciousServerError(f"adversary.options.recovery: one of auto, optimize, analytic; got {recovery!r}")
        if recovery == "analytic":
            try:
                first_linear_layer(model)
            except ValueError as exc:
                raise MaliciousServerError(f"adversary.options.recovery: {exc}") from None
        self.view, self.rounds, self.target, self.bias_boost = view, list(rounds or []), target, float(bias_boost)
        self.recovery = recovery
        self.public = view.public_images(public) if target == "auto" else None
        self.counts: Tensor | None = None  # estimated label counts of the last honest round

    def observe(self, round: int, model: nn.Module, gradient: dict[str, Tensor], examples_per_step: int) -> None:
        """An honest round's mean gradient: estimate how many images of each class it averaged."""
        if self.public is None:
            return
        name, _ = last_linear(model)
        db = gradient.get(f"{name}.bias")
        if db is None:
            return
        was_training = model.training
        model.eval()
        with torch.no_grad():
            p = torch.softmax(model(self.public), dim=-1).mean(0).double()
        model.train(was_training)
        self.counts = (examples_per_step * (p - db.double().cpu())).clamp_min(0)

    def target_for(self, round: int) -> int:
        if self.target == "cycle" or (self.target == "auto" and self.counts is None):
            return (round - 1) % self.view.num_classes if self.target == "cycle" else 0
        if self.target == "auto":
            present = self.counts >= 0.5
            if not bool(present.any()):
                return int(self.counts.argmax())
            return int(torch.where(present, self.counts, torch.full_like(self.counts, float("inf"))).argmin())
        return int(self.target)

    def broadcast(self, round: int, model: nn.Module) -> Broadcast | None:
        if not self.active(round):
            return None
        target = self.target_for(round)
        fished = fish(model, target, bias_boost=self.bias_boost)
        info = {"target_class": target, "bias_boost": self.bias_boost, "classifier": last_linear(fished)[0],
                "recovery": self.recovery}
        if self.counts is not None:
            info["estimated_counts"] = [float(f"{float(c):.2f}") for c in self.counts]
        return Broadcast(fished.state_dict(), info=info)


@STRATEGIES.register("imprint")
class ImprintServer(_Rounds):
    """Fowl et al. 2022: an inserted input block with ``bins`` brightness bins; needs architecture control.

    ``bins`` defaults to 4 x the images the server expects in one update (batch size
    x local steps, x ``clients`` for a secure-aggregation sum), so most bins hold at
    most one image. Thresholds: equal-mass bins of a Gaussian fitted to the public
    images' mean brightness (``distribution="empirical"``: their quantiles). ``gain`` and
    ``scale`` (see :func:`adversary.malicious.imprint.imprint_weights`) default to 0.1 each:
    gradients well above SecAgg+'s quantization step, thresholds that barely move over
    FedAvg's local steps, and an input shift of about 1 % of the pixel range."""

    # Inserts an ImprintBlock right after the input; its bin thresholds come from public data.
    requires = frozenset({Capability.ARCHITECTURE_CONTROL, Capability.PUBLIC_DATA})

    def __init__(self, *, view: ServerView, model: nn.Module, rounds: list[int] | None = None, bins: int | None = None,
                 clients: int = 1, public: str = "test", distribution: str = "normal", gain: float = 0.1,
                 scale: float = 0.1, seed: int = 0) -> None:
        if bins is not None and not 2 <= bins <= 65_536:
            raise MaliciousServerError(f"adversary.options.bins: must be in [2, 65536], got {bins}")
        if distribution not in ("normal", "empirical"):
            raise MaliciousServerError(f"adversary.options.distribution: must be 'normal' or 'empirical', got {distribution!r}")
        self.view, self.rounds = view, list(rounds or [])
        self.bins = int(bins or min(65_536, max(8, 4 * view.images_per_update * max(1, int(clients)))))
        try:
            images = view.public_images(public)
        except Exception as exc:  # noqa: BLE001 - any loading problem is a config problem here
            raise MaliciousServerError(f"adversary.options.public: {exc}") from None
        if tuple(images.shape[1:]) != tuple(view.input_shape):
            raise MaliciousServerError(f"adversary.options.public: images of shape {tuple(images.shape[1:])}, "
                                       f"the model takes {view.input_shape}")
        if gain <= 0 or scale <= 0:
            raise MaliciousServerError(f"adversary.options.gain/scale: must be > 0, got {gain} / {scale}")
        self.public, self.distribution, self.gain, self.scale, self.seed = public, distribution, float(gain), float(scale), int(seed)
        self.thresholds = brightness_thresholds(images, self.bins, distribution=distribution)
        self.spec = architecture_spec([{"kind": "input-residual", "name": IMPRINT_BLOCK, "hidden": self.bins}])

    def broadcast(self, round: int, model: nn.Module) -> Broadcast | None:
        if not self.active(round):
            return None
        state = dict(model.state_dict())
        block = imprint_weights(self.view.input_shape, self.thresholds, gain=self.gain, scale=self.scale, seed=self.seed + round)
        state.update({f"{IMPRINT_BLOCK}.{k}": v for k, v in block.items()})
        return Broadcast(state, config={ARCHITECTURE_KEY: self.spec},
                         info={"bins": self.bins, "public": self.public, "distribution": self.distribution,
                               "block": IMPRINT_BLOCK})


def server_threat_model(*, architecture: bool, public_data: bool = True) -> ThreatModel:
    """What a malicious server controls: the weights it sends always; the architecture only where the
    deployment lets the server ship the model; public data (its own evaluation split)."""
    return ThreatModel(name="malicious-server", control="architecture" if architecture else "weights", public_data=public_data)


def build_strategy(options: dict[str, Any], *, model: nn.Module, view: ServerView, threat_model: ThreatModel) -> ServerStrategy:
    """From the role's options; checks the control the deployment grants and that the model fits."""
    opts = dict(options)
    name = opts.pop("strategy", "trap-weights")
    if name not in STRATEGIES:
        raise MaliciousServerError(f"adversary.options.strategy: unknown {name!r}; choose one of: {STRATEGIES.choices()}")
    try:
        check_requirements(name, STRATEGIES[name].requires, threat_model)
    except ThreatModelError as exc:
        hint = " (set federation.model_from_server = true for a deployment where the server ships the model)" \
            if "architecture" in str(exc) else ""
        raise MaliciousServerError(f"adversary.options.strategy: {exc}{hint}") from None
    accepted = STRATEGIES.options(name, exclude=("view", "model"))
    unknown = sorted(set(opts) - set(accepted))
    if unknown:
        raise MaliciousServerError(f"adversary.options.{unknown[0]}: not an option of strategy {name!r}; "
                                   f"accepted: strategy, {', '.join(accepted)}")
    try:
        return STRATEGIES[name](view=view, model=model, **opts)
    except TypeError as exc:
        raise MaliciousServerError(f"adversary.options: {exc}") from None
