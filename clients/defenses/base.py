"""Interfaces of client-side defenses and the per-round pipeline the ClientApp runs.

Three hooks, each a small protocol:

- :class:`BatchEncoder` (``kind="encoder"``): ``encode(x, y_onehot, rng, ctx)`` turns the
  private batch into the model's input and soft labels and returns the encoding
  keys (recorded into the ground-truth sidecar only, never into a reply).
- :class:`GradientStep` (``kind="step"``): ``gradient(model, x, y, params, rng)``
  replaces :func:`clients.training.gradient_step` (DP-SGD's per-example clipping).
  Used for the FedSGD gradient and for every local step of FedAvg.
- :class:`UpdateTransform` (``kind="update"``): ``apply(update, rng)`` maps the outgoing
  update (FedSGD: gradients; FedAvg: the delta new - received) to a new one.
- :class:`ModelVetter` (``kind="vet"``): ``vet(context)`` inspects the model the server
  sent before any training and may have the client refuse the round.

At most one encoder, one step hook and one vetter; update transforms run in the configured
order. Any defense may also report per-round metrics (``round_metrics``) and keep
state across rounds in the client's ``context.state``.

Randomness: each defense gets its own ``torch.Generator`` per (seed, round,
partition, position in the list), so runs are reproducible and adding one
defense does not change another's draws.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from clients.defenses.registry import registered
from fl_sim.config import ConfigError, DefenseParams, RunConfig

GradFn = Callable[[nn.Module, Tensor, Tensor, dict[str, nn.Parameter]], tuple[float, dict[str, Tensor], dict[str, Tensor]]]


@dataclass(frozen=True)
class BuildContext:
    """What a defense may inspect when it is built (once per client process, and at validation)."""

    config: RunConfig
    input_shape: tuple[int, int, int]
    num_classes: int
    model: nn.Module
    key: str  # config key of this entry, e.g. "defenses[0]", for error messages


@dataclass(frozen=True)
class EncodeContext:
    """The private data a batch encoder may draw partners from."""

    indices: np.ndarray  # dataset indices of the batch (N,)
    pool: np.ndarray  # dataset indices of this client's private partition
    train_x: Tensor  # the private dataset's images (index with pool/indices)
    train_y: Tensor
    num_classes: int


@dataclass(frozen=True)
class RoundContext:
    """What a defense may use to report metrics after a round's local training."""

    state: Any  # flwr RecordDict of this client (persists across rounds), or None
    round: int
    steps: int
    batch_size: int  # actual batch size
    partition_size: int


@runtime_checkable
class BatchEncoder(Protocol):
    def encode(
        self, x: Tensor, y_onehot: Tensor, rng: torch.Generator, context: EncodeContext
    ) -> tuple[Tensor, Tensor, dict[str, np.ndarray]]:
        """Encoded images, soft labels (N, num_classes) and the keys (name -> array)."""
        ...


@runtime_checkable
class GradientStep(Protocol):
    def gradient(
        self, model: nn.Module, x: Tensor, y: Tensor, params: dict[str, nn.Parameter], rng: torch.Generator
    ) -> tuple[float, dict[str, Tensor], dict[str, Tensor]]:
        """Like :func:`clients.training.gradient_step`: loss, gradients, BN statistics."""
        ...


@runtime_checkable
class UpdateTransform(Protocol):
    def apply(self, update: dict[str, Tensor], rng: torch.Generator) -> dict[str, Tensor]: ...


@dataclass(frozen=True)
class VetContext:
    """What a client can inspect about the model it received, before training on it."""

    round: int
    model: nn.Module  # the model as it would train: received weights loaded (and any server-defined block)
    received: dict[str, Tensor]  # every tensor the instruction carried
    agreed_keys: frozenset[str]  # the tensors of the architecture the client agreed to
    architecture: str | None  # a server-defined architecture spec, if the instruction carried one
    previous: dict[str, Tensor] | None  # the agreed tensors the client received the last time it took part
    probe: Tensor  # a few of the client's own images (never sent anywhere)


@dataclass
class VetReport:
    scores: dict[str, float]  # check -> score
    flagged: list[str]  # checks whose score passed their threshold
    refuse: bool  # the client does not train on this model

    def metrics(self) -> dict[str, float]:
        out = {f"vetting/{k}": float(v) for k, v in self.scores.items()}
        out.update({"vetting-flagged": float(bool(self.flagged)), "vetting-refused": float(self.refuse)})
        out.update({f"vetting-flag/{k}": 1.0 for k in self.flagged})
        return out


@runtime_checkable
class ModelVetter(Protocol):
    def vet(self, context: VetContext) -> VetReport: ...


class Defense:
    """Optional base class: defaults for the optional hooks."""

    def round_metrics(self, context: RoundContext) -> dict[str, float]:
        return {}


def generator_for(seed: int, round: int, partition: int, position: int) -> torch.Generator:
    """The seeded torch generator of one defense for one client round."""
    state = np.random.SeedSequence([seed, round, partition, position, 0xDEF]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state >> np.uint64(1)))


def one_hot(y: Tensor, num_classes: int) -> Tensor:
    return torch.nn.functional.one_hot(y.long(), num_classes).to(torch.float32)


@dataclass
class _Entry:
    position: int
    params: DefenseParams
    kind: str
    impl: Any


class Defenses:
    """The configured defenses of a run, built once per client process."""

    def __init__(self, entries: list[_Entry]) -> None:
        self.entries = entries
        self.encoder = next((e for e in entries if e.kind == "encoder"), None)
        self.step = next((e for e in entries if e.kind == "step"), None)
        self.vetter = next((e for e in entries if e.kind == "vet"), None)
        self.transforms = [e for e in entries if e.kind == "update"]

    def __bool__(self) -> bool:
        return bool(self.entries)

    @property
    def names(self) -> list[str]:
        return [e.params.name for e in self.entries]

    def for_partition(self, partition: int) -> Defenses:
        """The defenses this client applies (a defense's ``partitions`` may name only some clients)."""
        return Defenses([e for e in self.entries if e.params.applies_to(partition)])

    def for_round(self, *, seed: int, round: int, partition: int) -> RoundDefenses:
        """This client's defenses for one round; each keeps its position's generator whichever others apply."""
        mine = self.for_partition(partition)
        return RoundDefenses(mine, {e.position: generator_for(seed, round, partition, e.position) for e in mine.entries})


def build_defenses(config: RunConfig, *, input_shape: tuple[int, int, int], num_classes: int, model: nn.Module) -> Defenses:
    """Instantiate the configured defenses; raises :class:`ConfigError` (one line) on bad combinations with the data/model."""
    specs = registered()
    entries = []
    for i, params in enumerate(config.defenses):
        spec = specs[params.name]
        ctx = BuildContext(config, tuple(input_shape), num_classes, model, f"defenses[{i}]")
        impl = spec.factory(params, ctx)
        expected = {"encoder": BatchEncoder, "step": GradientStep, "update": UpdateTransform, "vet": ModelVetter}[spec.kind]
        if not isinstance(impl, expected):
            raise TypeError(f"defense {spec.name!r} is registered as {spec.kind} but does not implement {expected.__name__}")
        entries.append(_Entry(i, params, spec.kind, impl))
    return Defenses(entries)


@dataclass
class RoundDefenses:
    """One client round's view of the defenses: seeded generators and a timer."""

    defenses: Defenses
    rngs: dict[int, torch.Generator]
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)

    def encode(self, x: Tensor, y: Tensor, context: EncodeContext) -> tuple[Tensor, Tensor, dict[str, np.ndarray]] | None:
        """Encoded (x, soft y, keys), or None when no encoder is configured."""
        enc = self.defenses.encoder
        if enc is None:
            return None
        start = time.perf_counter()
        out = enc.impl.encode(x, one_hot(y, context.num_classes), self.rngs[enc.position], context)
        self.seconds += time.perf_counter() - start
        return out

    def grad_fn(self) -> GradFn | None:
        """The replacement gradient computation (timed as defense time), or None."""
        step = self.defenses.step
        if step is None:
            return None
        rng = self.rngs[step.position]

        def grad_fn(model: nn.Module, x: Tensor, y: Tensor, params: dict[str, nn.Parameter]):
            start = time.perf_counter()
            try:
                return step.impl.gradient(model, x, y, params, rng)
            finally:
                self.seconds += time.perf_counter() - start

        return grad_fn

    def vet(self, context: VetContext) -> VetReport | None:
        """The vetting defense's verdict on the received model (timed), or None without one."""
        vetter = self.defenses.vetter
        if vetter is None:
            return None
        start = time.perf_counter()
        try:
            return vetter.impl.vet(context)
        finally:
            self.seconds += time.perf_counter() - start

    def transform(self, update: dict[str, Tensor]) -> dict[str, Tensor]:
        start = time.perf_counter()
        for entry in self.defenses.transforms:
            update = entry.impl.apply(update, self.rngs[entry.position])
        self.seconds += time.perf_counter() - start
        return update

    def round_metrics(self, context: RoundContext) -> dict[str, float]:
        start = time.perf_counter()
        out: dict[str, float] = {}
        for entry in self.defenses.entries:
            hook = getattr(entry.impl, "round_metrics", None)
            if hook is not None:
                out.update(hook(context))
        self.seconds += time.perf_counter() - start
        return out


def config_error(key: str, message: str) -> ConfigError:
    return ConfigError(f"{key}: {message}")
