"""From the traffic and the public deployment card to what the attacker holds.

One builder, :func:`build_observation`, serves every attack:

- ``update``: one client's reply (an eavesdropper on its link, a curious server);
- ``aggregate``: the change of the global model over a round, the mean update of
  its participants (a curious server under secure aggregation; a malicious
  client, which subtracts its own reply);
- ``malicious``: a malicious server's recovery from a reply to the model it sent,
  or, under secure aggregation, from the round's unmasked mean, both read with the
  server's own record of what it sent (:class:`adversary.malicious.record.ServerRecord`).

Its inputs are the traffic log, the deployment card (what is public about the
deployment, or what the user states about an audited app) and the attacker's own
record. It never opens the ground-truth sidecar and never loads a dataset: the
model is rebuilt from the card and filled with the weights the traffic carried;
the protocol, the update kind and the hyperparameters come from the traffic,
falling back to the card.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from adversary.malicious.record import ServerRecord
from adversary.roles.base import AttackTarget
from adversary.traffic_log import MessageInfo, TrafficLog, TrafficLogError
from fl_sim.deployment import ClientRecipe, DeploymentCard, ModelCard
from fl_sim.models import ModelError, Normalize
from fl_sim.models.front import Transform, WithFront
from fl_sim.models.server_defined import ARCHITECTURE_KEY, apply_architecture
from fl_sim.wire import (
    ARRAYS,
    BATCH_SIZE,
    BUFFERS,
    LEGACY_DOWN,
    LEGACY_UP,
    LOCAL_STEPS,
    LR,
    PROTOCOL,
    UpdateKind,
    plain_keys,
    record_tensors,
    reported_examples,
    update_kind,
)

ModelFactory = Callable[[], nn.Module]
LR_KEYS = (LR, "learning-rate", "learning_rate")
INPUT_FRONT = "input_normalization"  # the module name of an audited app's input normalisation


class ObservationError(ValueError):
    """The traffic does not fit the stated model or deployment; one line naming what to fix."""


@dataclass
class Observation:
    """What the attacker holds for one target."""

    kind: str  # the target's kind: update, aggregate, malicious
    round: int
    model: nn.Module  # the model the update answers, as sent (a malicious server's manipulation included)
    update: dict[str, Tensor]  # the gradient, the weight delta or the new weights
    update_kind: UpdateKind
    num_examples: int | None  # the examples behind the update, where the traffic reveals them
    local: dict[str, Any]  # lr, local_steps, batch_size (examples per local step) and where each came from
    recipe: ClientRecipe  # the client's local training as the attacker models it
    image_shape: tuple[int, int, int]
    num_classes: int
    defenses: tuple[str, ...] = ()  # the clients' defenses (the protocol the deployment announces)
    encoder: str | None = None  # the deployment's batch encoder (public protocol knowledge)
    # InstaHide flips signs around this per-channel value (protocol + the model's Normalize: public).
    sign_center: tuple[float, ...] | None = None
    running_stats: dict[str, Tensor] = field(default_factory=dict)
    reply: MessageInfo | None = None  # the attacked reply (None for a server's aggregate)
    instruction: MessageInfo | None = None  # the message the update answers
    client: int | None = None  # the attacked client's node (None for aggregates)
    aggregate_of: tuple[int, ...] = ()  # the clients whose batches an aggregate averages
    info: dict[str, Any] = field(default_factory=dict)  # a malicious server's choices that round
    refused: bool = False  # the client reported zero examples (refused the round)
    foreign: bool = False  # an audited app: no ground truth, hyperparameters granted or assumed
    control: str = "none"  # the server control the observer's position gives it (a malicious server's)
    source: dict[str, Any] = field(default_factory=dict)  # where it came from, for the outputs

    @property
    def message(self) -> int | None:
        return self.reply.id if self.reply is not None else None

    @property
    def input_range(self) -> tuple[float, float]:
        """InstaHide's sign flips around ``c`` put model inputs in [2c - 1, 2c] (a superset box)."""
        if self.sign_center is None:
            return (0.0, 1.0)
        return (min(0.0, 2 * min(self.sign_center) - 1), max(1.0, 2 * max(self.sign_center)))

    def unsigned(self, x: Tensor) -> Tensor:
        """``|x - c|``: what survives InstaHide's unknown signs (``x`` itself without InstaHide)."""
        if self.sign_center is None:
            return x
        return (x - self.center_tensor.to(x)).abs()

    @property
    def center_tensor(self) -> Tensor:
        c = self.sign_center or (0.0,)
        return torch.tensor(c, dtype=torch.float32).view(1, -1, 1, 1)


# ----------------------------------------------------------------------------- traffic helpers


def client_updates(log: TrafficLog, round: int | None = None, client: int | None = None) -> list[MessageInfo]:
    """Client-to-server training replies, optionally of one round and/or client."""
    return [m for m in log.messages(round=round, client=client, direction="up", message_type="train") if not m.error]


def find_instruction(log: TrafficLog, reply: MessageInfo) -> MessageInfo:
    for candidate in log.messages(round=reply.round, client=reply.src_node, direction="down"):
        if candidate.flower_id == reply.reply_to:
            return candidate
    raise TrafficLogError(f"MSG_ID: the instruction that message {reply.id} answers was not captured")


def _client_update(log: TrafficLog, reply_id: int) -> MessageInfo:
    reply = log.message(reply_id)
    if reply.direction != "up" or reply.message_type != "train":
        raise TrafficLogError(f"MSG_ID: message {reply_id} is a {reply.direction} {reply.message_type} message, not a client update")
    return reply


# ----------------------------------------------------------------------------- the model


def load_factory(ref: str, root: str | None, option: str = "--model") -> Callable[..., Any]:
    """A callable ``module:attr`` of an audited app (from its app directory); ``option`` names it in errors."""
    if ":" not in ref:
        raise ObservationError(f"{option}: expected module:attribute, got {ref!r}")
    if root and root not in sys.path:
        sys.path.insert(0, root)
    module_name, _, attr = ref.partition(":")
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:  # a user module can fail to import in any way
        raise ObservationError(f"{option}: cannot load {ref!r} ({type(exc).__name__}: {exc})") from None
    if not callable(found):
        raise ObservationError(f"{option}: {ref} is a {type(found).__name__}, not a callable")
    return found


def _num_classes(model: nn.Module) -> int:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ObservationError("--model: no nn.Linear classifier found to read the number of classes from")
    return linears[-1].out_features


def _input_front(card: ModelCard) -> nn.Module | None:
    """An audited app's input normalisation, which it does in its data pipeline (None: none stated)."""
    if card.transform is not None:
        return Transform(load_factory(card.transform, card.factory_root, option="--input-transform"))
    if card.mean is not None or card.std is not None:
        try:
            return Normalize(card.input_shape[0], card.mean, card.std)
        except ModelError as exc:
            raise ObservationError(str(exc).replace("model.mean", "--input-mean").replace("model.std", "--input-std")) from None
    return None


def build_model(card: ModelCard, factory: ModelFactory | None = None) -> nn.Module:
    """The agreed architecture taking images in [0, 1]: fl-sim's model by name (its normalisation is
    inside), or the audited app's factory behind the input normalisation the user states."""
    if card.name is not None:
        return card.build()
    if factory is None:
        if card.factory is None:
            raise ObservationError("--model: an audited app's model must be named (module:factory) with its input shape C,H,W")
        factory = load_factory(card.factory, card.factory_root)
    try:
        model = factory()
    except Exception as exc:  # the user's factory can fail in any way
        raise ObservationError(f"--model: {card.factory} raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ObservationError(f"--model: {card.factory} returned a {type(model).__name__}, not a torch.nn.Module")
    front = _input_front(card)
    return WithFront(model, INPUT_FRONT, front) if front is not None else model


def _main_record(tensors: dict[str, Tensor], records: Sequence[str]) -> dict[str, Tensor]:
    """The record holding the model: the first of ``records`` present, else the one with the most tensors."""
    for record in records:
        found = record_tensors(tensors, record)
        if found:
            return found
    grouped: dict[str, dict[str, Tensor]] = {}
    for name, tensor in tensors.items():
        record, _, key = name.rpartition("/")
        grouped.setdefault(record, {})[key] = tensor
    return max(grouped.values(), key=len) if grouped else {}


def map_tensors(model: nn.Module, tensors: dict[str, Tensor], records: Sequence[str], order: Sequence[str] = ()) -> dict[str, Tensor]:
    """A message's model tensors as a state dict of ``model``: by name (Message-API records), else by
    position (legacy ``Parameters`` lists) in ``order`` (the deployment's shared keys; default: the
    model's state_dict order). A mismatch is one line listing what differs."""
    state = model.state_dict()
    record = _main_record(tensors, records)
    if record and set(record) <= set(state):
        bad = [f"{k} {tuple(v.shape)} vs {tuple(state[k].shape)}" for k, v in record.items() if v.shape != state[k].shape]
        if bad:
            raise ObservationError("--model: shapes differ: " + "; ".join(bad[:4]))
        return dict(record)
    if record and all(k.isdigit() for k in record):
        keys = list(order) or list(state)
        # NumPy serialisation turns 0-d tensors (BatchNorm's num_batches_tracked) into 1-element arrays
        ordered = [record[k].reshape(state[key].shape) if key in state and record[k].numel() == state[key].numel() == 1
                   else record[k] for k, key in zip(sorted(record, key=int), keys)]
        if len(record) != len(keys):
            raise ObservationError(f"--model: the message has {len(record)} arrays, the model's state_dict {len(keys)}")
        bad = [f"#{i} {tuple(a.shape)} vs {k} {tuple(state[k].shape)}" for i, (a, k) in enumerate(zip(ordered, keys))
               if k not in state or a.shape != state[k].shape]
        if bad:
            raise ObservationError("--model: arrays do not match the model in order: " + "; ".join(bad[:4]))
        return dict(zip(keys, ordered))
    missing = sorted(set(record) - set(state))[:4]
    raise ObservationError(f"--model: message tensors {missing} are not in the model (it has e.g. {list(state)[:4]})")


def _model_as_sent(card: DeploymentCard, config: dict[str, Any], sent: dict[str, Tensor],
                   factory: ModelFactory | None) -> nn.Module:
    """The card's architecture (with a server-defined block where the instruction carries one) and the sent weights."""
    if card.model is None:
        raise ObservationError("--model/--input-shape: an audited app's model must be named (module:factory) with its "
                               "input shape C,H,W")
    model = build_model(card.model, factory)
    spec = config.get(ARCHITECTURE_KEY)
    if spec:
        model = apply_architecture(model, str(spec), card.model.input_shape)
    model.load_state_dict(map_tensors(model, sent, (ARRAYS, LEGACY_DOWN), card.shared_keys), strict=False)
    return model


# ----------------------------------------------------------------------------- hyperparameters


def _source(card: DeploymentCard, key: str) -> str:
    if card.origin == "audit":
        return "stated" if key in card.recipe.stated else "assumed"
    return "deployment"


def _recipe(card: DeploymentCard, config: dict[str, Any], reported: Any = None) -> tuple[ClientRecipe, dict[str, Any]]:
    """The client's recipe for one update: lr, local steps and batch size from the instruction, else the
    card (announced, or stated for an audit); and where each value came from.

    ``reported``: the reply's num-examples where it counts a dataset (audited apps): with a recipe that
    walks the data in epochs, it gives the images one update used."""
    recipe, sources = card.recipe, {}
    lr = next((float(config[k]) for k in LR_KEYS if isinstance(config.get(k), (int, float))), None)
    if lr is not None:
        sources["lr"] = "traffic"
    else:
        lr, sources["lr"] = recipe.lr, _source(card, "lr") if recipe.lr is not None else "unknown"
    batch = config.get(BATCH_SIZE)
    if batch is not None:
        sources["batch_size"] = "traffic"
    else:
        batch, sources["batch_size"] = recipe.batch_size, _source(card, "batch_size") if recipe.batch_size else "unknown"
    images = None
    if recipe.epochs is not None and batch and isinstance(reported, int) and reported > 0:
        images = recipe.model_copy(update={"batch_size": int(batch)}).images_for(reported)
        sources["num_images"] = f"recipe over the {reported} reported examples"
    if LOCAL_STEPS in config:
        steps, sources["local_steps"] = int(config[LOCAL_STEPS]), "traffic"
    elif images is not None:
        steps = recipe.model_copy(update={"batch_size": int(batch)}).steps_for(images)
        sources["local_steps"] = f"recipe ({recipe.epochs} epochs)"
    elif recipe.local_steps is not None:
        steps, sources["local_steps"] = recipe.local_steps, _source(card, "local_steps")
    else:
        steps, sources["local_steps"] = 1, "assumed 1"
    if card.origin == "audit":
        sources["optimizer"] = f"{recipe.optimizer} ({_source(card, 'optimizer')})"
        sources["normalisation"] = ("stated" if card.model is not None and (card.model.mean or card.model.transform)
                                    else "none stated")
    resolved = recipe.model_copy(update={"lr": lr, "local_steps": steps, "batch_size": int(batch) if batch else None})
    return resolved, {"lr": lr, "local_steps": steps, "batch_size": batch, "images": images, "sources": sources}


def _kind(card: DeploymentCard, config: dict[str, Any]) -> UpdateKind:
    return update_kind(config[PROTOCOL], card.upload) if PROTOCOL in config else card.update_kind


# ----------------------------------------------------------------------------- the builders


def _update(log: TrafficLog, card: DeploymentCard, target: AttackTarget, factory: ModelFactory | None,
            server: ServerRecord | None) -> Observation:
    reply = _client_update(log, target.messages[0])
    instruction = find_instruction(log, reply)
    sent, received = log.tensors(instruction.id), log.tensors(reply.id)
    config = plain_keys(instruction.config)
    model = _model_as_sent(card, config, sent, factory)
    update = map_tensors(model, {k: v for k, v in received.items() if not k.startswith(f"{BUFFERS}/")},
                         (ARRAYS, LEGACY_UP), card.shared_keys)
    reported = reported_examples(reply.metrics)
    recipe, local = _recipe(card, config, reported if card.reported_examples == "dataset" else None)
    if card.reported_examples != "update":
        local["sources"]["num_examples_reported"] = reported
    num_examples = int(reported) if reported is not None and card.reported_examples == "update" else local.pop("images")
    model_card = card.model
    assert model_card is not None  # _model_as_sent checked it
    return Observation(
        kind=target.kind,
        round=int(reply.round) if reply.round is not None else -1,
        model=model,
        update={k: v.float() for k, v in update.items() if v.is_floating_point()},
        update_kind=_kind(card, config),
        num_examples=num_examples,
        local=local,
        recipe=recipe,
        image_shape=model_card.input_shape,
        num_classes=model_card.num_classes or _num_classes(model),
        defenses=card.defenses,
        encoder=card.encoder,
        sign_center=card.sign_center,
        running_stats=record_tensors(received, BUFFERS),
        reply=reply,
        instruction=instruction,
        client=reply.src_node,
        foreign=card.origin == "audit",
        source={"kind": "reply", "message": reply.id, "client_node": reply.src_node,
                "client_metrics": {k: v for k, v in reply.metrics.items() if isinstance(v, (int, float, str, bool))}},
    )


def _aggregate(log: TrafficLog, card: DeploymentCard, target: AttackTarget, factory: ModelFactory | None,
               server: ServerRecord | None) -> Observation:
    """The mean update of a round from the global models before and after it.

    With n participants of equal weight: FedSGD ``w' = w - lr * mean(g)``, so ``mean(g) = (w - w') / lr``;
    FedAvg ``w' = mean(w_i)`` (weights) or ``w + mean(delta_i)``. A malicious client also knows its own
    reply and removes it: ``others = (n * mean - own) / (n - 1)``. The result is the update of one
    "virtual client" holding the union of the others' batches; for FedSGD (and single-step FedAvg)
    attacking it is exact, for several local steps an approximation."""
    if len(target.messages) not in (2, 3):
        raise ValueError("an aggregate target needs (before, after[, own reply])")
    before, after = log.message(target.messages[0]), log.message(target.messages[1])
    config = plain_keys(before.config)
    model = _model_as_sent(card, config, log.tensors(before.id), factory)
    order = card.shared_keys
    w0 = map_tensors(model, log.tensors(before.id), (ARRAYS, LEGACY_DOWN), order)
    w1 = map_tensors(model, log.tensors(after.id), (ARRAYS, LEGACY_DOWN), order)
    own = map_tensors(model, log.tensors(target.messages[2]), (ARRAYS, LEGACY_UP), order) if len(target.messages) == 3 else None
    participants = sorted({m.dst_node for m in log.messages(round=target.round, direction="down", message_type="train")})
    if not participants:
        raise TrafficLogError(f"round {target.round}: no training instructions captured")
    n = len(participants)
    others = [p for p in participants if p != target.client] if own is not None else participants
    if own is not None and n < 2:
        raise ValueError("a malicious client alone in its round has no one to attack")
    recipe, local = _recipe(card, config)
    kind = _kind(card, config)
    if kind == "gradient":
        mean = {k: (w0[k] - w1[k]) / local["lr"] for k in w1 if k in w0}
    elif kind == "delta":
        mean = {k: w1[k] - w0[k] for k in w1 if k in w0}
    else:
        mean = dict(w1)
    if own is not None:
        mean = {k: (n * v - own[k]) / (n - 1) for k, v in mean.items() if k in own}
    batch = int(local["batch_size"])
    model_card = card.model
    assert model_card is not None
    return Observation(
        kind=target.kind,
        round=int(target.round),  # type: ignore[arg-type]
        model=model,
        update={k: v.to(torch.float32) for k, v in mean.items()},
        update_kind=kind,
        num_examples=batch * int(local["local_steps"]) * len(others),
        # Each local step of the virtual client processes every client's step batch at once.
        local={**local, "batch_size": batch * len(others)},
        recipe=recipe.model_copy(update={"batch_size": batch * len(others)}),
        image_shape=model_card.input_shape,
        num_classes=model_card.num_classes or _num_classes(model),
        defenses=card.defenses,
        encoder=card.encoder,
        sign_center=card.sign_center,
        reply=after,
        instruction=before,
        aggregate_of=tuple(others),
        foreign=card.origin == "audit",
        source={"kind": "aggregate", "clients": len(others)},
    )


def _malicious(log: TrafficLog, card: DeploymentCard, target: AttackTarget, factory: ModelFactory | None,
               server: ServerRecord | None) -> Observation:
    """A malicious server's view of a manipulated round: one reply, or the unmasked mean it recorded."""
    if server is None:
        raise ValueError("a malicious server's recovery needs its own record of what it sent")
    rnd = int(target.round)  # type: ignore[arg-type]
    entry = server.entry(rnd)
    control = "architecture" if card.model_from_server else "weights"
    if not target.from_aggregate:
        obs = _update(log, card, target, factory, server)
        obs.kind, obs.info, obs.control = target.kind, entry.get("info", {}), control
        obs.refused = reported_examples(obs.reply.metrics) == 0  # type: ignore[union-attr]
        return obs
    aggregate, mean = server.aggregate(rnd)
    sent, config = server.sent(rnd)
    model = _model_as_sent(card, config, {f"{ARRAYS}/{k}": v for k, v in sent.items()}, factory)
    model_card = card.model
    assert model_card is not None
    recipe, local = _recipe(card, {})
    return Observation(
        kind=target.kind,
        round=rnd,
        model=model,
        update=dict(mean),
        update_kind=card.update_kind,
        num_examples=aggregate.num_examples,
        local={**local, "batch_size": int(local["batch_size"]) * len(aggregate.nodes)},
        recipe=recipe.model_copy(update={"batch_size": int(local["batch_size"]) * len(aggregate.nodes)}),
        image_shape=model_card.input_shape,
        num_classes=model_card.num_classes or _num_classes(model),
        aggregate_of=tuple(aggregate.nodes),
        info=entry.get("info", {}),
        refused=aggregate.num_examples == 0,
        control=control,
        source={"kind": "aggregate", "clients": len(aggregate.nodes)},
    )


_BUILDERS = {"update": _update, "aggregate": _aggregate, "malicious": _malicious}


def build_observation(log: TrafficLog, card: DeploymentCard, target: AttackTarget, *,
                      factory: ModelFactory | None = None, server: ServerRecord | None = None) -> Observation:
    """The attacker's view of ``target``: the traffic, the card, and (a malicious server) its own record.

    ``factory`` builds an audited app's model (named on the command line); without it the card's
    factory is imported."""
    if target.kind not in _BUILDERS:
        raise ValueError(f"unknown attack target kind {target.kind!r}; choose one of: {', '.join(_BUILDERS)}")
    if card.origin == "audit" and target.kind != "update":
        raise ObservationError("--round/--msg: only client updates of an audited app can be attacked")
    return _BUILDERS[target.kind](log, card, target, factory, server)
