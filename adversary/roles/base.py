"""Adversary roles: what an adversary observes, and which observations it attacks.

A role sees the traffic as the tap reports it (one :class:`Intercept` per
message) and may read the traffic log, never the ground-truth sidecar. It turns
what it is allowed to see into :class:`AttackTarget` s; the attack service runs
them. Roles are registered by name; a user's own role plugs in as
``module:Class`` in the config without editing this project.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from adversary.traffic_log import MessageInfo, TrafficView, message_from_json, message_to_json
from fl_sim.registry import Registry


class RoleError(ValueError):
    """A bad role name or option; one line naming the key."""


@dataclass(frozen=True)
class Intercept:
    """One message crossing the tap, as the adversary is told of it; ``message``: its index entry
    (metadata, metrics, config, the names and shapes of its tensors) as plain data."""

    log_id: int
    round: int | None
    direction: str
    src_node: int
    dst_node: int
    message_type: str
    message: MessageInfo | None = field(default=None, compare=False, repr=False)

    @property
    def client_node(self) -> int:
        return self.dst_node if self.direction == "down" else self.src_node

    def to_json(self) -> dict[str, Any]:
        return {"log_id": self.log_id, "round": self.round, "direction": self.direction, "src_node": self.src_node,
                "dst_node": self.dst_node, "message_type": self.message_type,
                "message": None if self.message is None else message_to_json(self.message)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Intercept:
        message = data.get("message")
        return cls(int(data["log_id"]), data["round"], str(data["direction"]), int(data["src_node"]), int(data["dst_node"]),
                   str(data["message_type"]), None if message is None else message_from_json(message))


@dataclass(frozen=True)
class ServerAggregate:
    """One round's unmasked mean update as a malicious server computed it under secure aggregation
    (its tensors are in the server's record, :mod:`adversary.malicious.record`); what its role is told."""

    round: int
    nodes: tuple[int, ...]
    num_examples: int
    protocol: str


TargetKind = Literal["update", "aggregate", "malicious", "decode"]
DECODERS = ("keyless", "keys")  # how a decode job turns inverted encodings into private images


@dataclass(frozen=True)
class AttackTarget:
    """What to attack: one client's update, an aggregate of several, or a malicious server's recovery.

    ``kind="update"``: ``messages`` holds one client reply. ``kind="aggregate"``:
    ``messages`` holds the global models sent before and after ``round`` (and, for a
    malicious client, its own reply to subtract). ``kind="malicious"``: a malicious
    server recovering with ``strategy`` from one reply (``messages``) or, under secure
    aggregation, from the unmasked mean of ``round`` it recorded (``from_aggregate``,
    over ``nodes``). See :mod:`adversary.observation`. ``kind="decode"``: ``messages`` holds one
    MixUp/InstaHide client's replies over T epochs; each is inverted and the encodings decoded by each
    of ``decode`` (keyless, keys), the number of private images taken from ``private_images`` or
    ``epochs`` where the attacker is told them (see :mod:`adversary.decode_job`).
    """

    kind: TargetKind
    round: int | None
    messages: tuple[int, ...] = ()
    client: int | None = None
    strategy: str | None = None
    from_aggregate: bool = False
    nodes: tuple[int, ...] = ()
    decode: tuple[str, ...] = ()
    epochs: int | None = None
    private_images: int | None = None

    def key(self) -> str:
        base = f"{self.kind}:{self.round}:{','.join(map(str, self.messages))}"
        if self.kind != "decode":
            return base
        return f"{base}:{'+'.join(self.decode)}:T{self.epochs}:P{self.private_images}"

    def to_json(self) -> dict[str, Any]:
        out = {"kind": self.kind, "round": self.round, "messages": list(self.messages), "client": self.client,
               "strategy": self.strategy, "from_aggregate": self.from_aggregate, "nodes": list(self.nodes)}
        if self.kind == "decode":
            out.update(decode=list(self.decode), epochs=self.epochs, private_images=self.private_images)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AttackTarget:
        """Also reads job books of earlier versions (a loose ``info`` dict, the ``trap`` kind)."""
        info = data.get("info") or {}
        kind = "malicious" if data["kind"] == "trap" else data["kind"]
        return cls(kind, data.get("round"), tuple(data.get("messages") or ()), data.get("client"),
                   data.get("strategy") or info.get("strategy") or ("trap-weights" if data["kind"] == "trap" else None),
                   bool(data.get("from_aggregate") or info.get("aggregate")), tuple(data.get("nodes") or info.get("nodes") or ()),
                   tuple(data.get("decode") or ()), data.get("epochs"), data.get("private_images"))


def check_decoders(option: str, value: Any) -> tuple[str, ...]:
    """``value`` (a name, a comma list or a list of names) as decoders; one line naming ``option`` otherwise."""
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value or [])
    bad = [n for n in names if n not in DECODERS]
    if not names or bad:
        raise RoleError(f"{option}: {bad[0] if bad else value!r} is not a decoder; choose from {', '.join(DECODERS)}")
    return tuple(dict.fromkeys(names))


def positive_count(option: str, value: Any) -> int | None:
    """``value`` as a count >= 1 (None stays None); one line naming ``option`` otherwise."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise RoleError(f"{option}: must be a whole number >= 1, got {value!r}")
    return value


def _is_partition(value: object, count: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < count


@dataclass(frozen=True)
class RoleContext:
    """What the simulation tells a role when it is built, and nothing more.

    ``secagg``: the deployment runs secure aggregation (individual uploads are masked).
    ``placed``: the node ids of the simulated clients the role's ``partition`` or ``partitions``
    option names (a malicious client's own node, the links an eavesdropper is wired onto; partition 0
    when neither is given), in the order named, for those that exist; ``num_partitions``: how many
    there are, to say so. Which node holds which partition otherwise is simulation bookkeeping a
    role never gets.
    """

    secagg: bool = False
    placed: tuple[int, ...] = ()
    num_partitions: int = 0

    @classmethod
    def for_simulation(cls, secagg: bool, options: dict[str, Any], nodes: list[int]) -> RoleContext:
        """The context of a role with ``options`` in a federation whose partition ``p`` runs on ``nodes[p]``."""
        # Neither option: partition 0, where a role that is placed without saying where (a malicious client) sits.
        asked = options.get("partitions") if "partitions" in options else [options.get("partition", 0)]
        placed = tuple(nodes[p] for p in asked or [] if _is_partition(p, len(nodes)))
        return cls(secagg=secagg, placed=placed, num_partitions=len(nodes))

    def missing(self, option: str, asked: list[int]) -> RoleError:
        """The error for ``asked`` partitions that are not all in ``placed``."""
        bad = [p for p in asked if not _is_partition(p, self.num_partitions)]
        have = f"partitions 0-{self.num_partitions - 1}" if self.num_partitions else "no partitions"
        return RoleError(f"adversary.options.{option}: no client with partition {bad[0] if bad else asked} (have {have})")


class Role:
    """What every role is, the built-in ones and a user's ``module:Class`` alike: a plug-in must
    subclass it, so that naming a module's function (``logging:basicConfig``) in a config cannot
    get it called. Built as ``Role(**options, context=RoleContext)``."""

    name: str = "role"

    def observe(self, event: Intercept, log: TrafficView) -> list[AttackTarget]:
        """React to one intercepted message; return what to attack now (maybe nothing)."""
        raise NotImplementedError

    def sees(self, event: Intercept) -> bool:
        """Whether this message is visible to the role at all."""
        raise NotImplementedError


RoleFactory = Callable[..., Role]
# Roles by name: ``factory(**options, context=RoleContext)``; the built-in ones register in builtin.py.
ROLES = Registry("role", error=RoleError)


def register_role(name: str) -> Callable[[RoleFactory], RoleFactory]:
    return ROLES.register(name)
