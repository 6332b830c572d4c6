"""The built-in roles: eavesdropper, honest-but-curious server, malicious client."""

from __future__ import annotations

from typing import Any

from adversary.roles.base import (
    AttackTarget,
    Intercept,
    Role,
    RoleContext,
    RoleError,
    check_decoders,
    positive_count,
    register_role,
)
from adversary.traffic_log import TrafficView
from fl_sim.wire import MODEL_RECORDS


def carries_model(log: TrafficView, log_id: int) -> bool:
    """Whether a message carries model tensors (SecAgg+ also sends key-exchange stages)."""
    heads = tuple(f"{record}/" for record in MODEL_RECORDS)
    return any(t.name.startswith(heads) for t in log.message(log_id).tensors)


def _is_update(event: Intercept) -> bool:
    return event.direction == "up" and event.message_type == "train"


def _rounds_ok(rounds: list[int], event: Intercept) -> bool:
    return not rounds or event.round in rounds


class Gathering:
    """A role's ``decode`` options: instead of attacking a MixUp/InstaHide client's updates one by one,
    gather ``gather`` of them (T epochs' worth: T times the client's updates per epoch) and attack them
    as one decode job: each inverted, the encodings decoded without keys or with granted keys.
    ``epochs`` / ``private_images``: what the attacker is told of those updates, to size the decode
    (neither: it estimates the number of private images from the encodings). Updates of a client that
    do not make up a whole ``gather`` by the end of the run are not decoded."""

    def __init__(self, decode: str | list[str] | None, gather: int | None, epochs: int | None,
                 private_images: int | None) -> None:
        self.decode = check_decoders("adversary.options.decode", decode) if decode is not None else ()
        self.gather = positive_count("adversary.options.gather", gather)
        self.epochs = positive_count("adversary.options.epochs", epochs)
        self.private_images = positive_count("adversary.options.private_images", private_images)
        if self.decode and self.gather is None:
            raise RoleError("adversary.options.gather: give the number of a client's updates to gather for each decode "
                            "(T epochs times its updates per epoch)")
        if not self.decode and (gather or epochs or private_images):
            raise RoleError("adversary.options.decode: gather, epochs and private_images need decode "
                            "(keyless or keys)")
        self.pending: dict[int, list[int]] = {}

    def target(self, event: Intercept) -> list[AttackTarget]:
        """One update as a target, or (decoding) the decode job it completes, if any."""
        if not self.decode:
            return [AttackTarget("update", event.round, (event.log_id,), client=event.src_node)]
        held = self.pending.setdefault(event.src_node, [])
        held.append(event.log_id)
        if len(held) < (self.gather or 1):
            return []
        self.pending[event.src_node] = []
        return [AttackTarget("decode", event.round, tuple(held), client=event.src_node, decode=self.decode,
                             epochs=self.epochs, private_images=self.private_images)]


@register_role("eavesdropper")
class Eavesdropper(Role):
    """Taps the links of a few clients (both directions or one) and attacks their updates.

    It does not know node ids in advance: it taps the first ``links`` client links it
    sees carrying traffic, or the explicit node ids in ``nodes``, or the links of the
    simulated clients ``partitions`` (where the simulation puts the wiretap; the role
    itself only learns their node ids). ``decode`` and its options: see :class:`Gathering`.
    """

    name = "eavesdropper"

    def __init__(self, *, links: int = 1, nodes: list[int] | None = None, partitions: list[int] | None = None,
                 directions: list[str] | None = None, rounds: list[int] | None = None, decode: str | list[str] | None = None,
                 gather: int | None = None, epochs: int | None = None, private_images: int | None = None,
                 context: RoleContext) -> None:
        self.gathering = Gathering(decode, gather, epochs, private_images)
        if links < 1:
            raise RoleError(f"adversary.options.links: must be >= 1, got {links}")
        if nodes and partitions:
            raise RoleError("adversary.options: give nodes or partitions, not both")
        self.links, self.rounds = links, list(rounds or [])
        self.tapped: list[int] = [int(n) for n in nodes or []]
        if partitions:
            if len(context.placed) != len(partitions):
                raise context.missing("partitions", list(partitions))
            self.tapped = [int(n) for n in context.placed]
        self.fixed = bool(self.tapped)
        self.directions = set(directions or ["up", "down"])
        if not self.directions <= {"up", "down"}:
            raise RoleError(f"adversary.options.directions: choose from up, down; got {sorted(self.directions)}")

    def sees(self, event: Intercept) -> bool:
        node = event.client_node
        if node not in self.tapped and not self.fixed and len(self.tapped) < self.links:
            self.tapped.append(node)
        return node in self.tapped and event.direction in self.directions

    def observe(self, event: Intercept, log: TrafficView) -> list[AttackTarget]:
        if not self.sees(event) or not _is_update(event) or not _rounds_ok(self.rounds, event):
            return []
        return self.gathering.target(event)


@register_role("curious-server")
class CuriousServer(Role):
    """Reads every message the server receives. Under secure aggregation it sees no
    individual update, only the aggregate, which it attacks instead. ``decode`` and its options:
    see :class:`Gathering` (``max_clients``: the clients it decodes)."""

    name = "curious-server"

    def __init__(self, *, rounds: list[int] | None = None, max_clients: int | None = None, decode: str | list[str] | None = None,
                 gather: int | None = None, epochs: int | None = None, private_images: int | None = None,
                 context: RoleContext) -> None:
        self.gathering = Gathering(decode, gather, epochs, private_images)
        if context.secagg and self.gathering.decode:
            raise RoleError("adversary.options.decode: under federation.secagg the server sees no client's own updates "
                            "to decode")
        self.rounds = list(rounds or [])
        self.max_clients = max_clients
        self.secagg = context.secagg
        self.per_round: dict[int | None, int] = {}
        self.decoded: set[int] = set()
        self.global_models: dict[int, int] = {}

    def sees(self, event: Intercept) -> bool:
        return True

    def observe(self, event: Intercept, log: TrafficView) -> list[AttackTarget]:
        if self.secagg:
            return self._aggregate(event, log)
        if not _rounds_ok(self.rounds, event):
            return []
        if not _is_update(event):
            return []
        if self.gathering.decode:
            if self.max_clients is not None and event.src_node not in self.decoded:
                if len(self.decoded) >= self.max_clients:
                    return []
                self.decoded.add(event.src_node)
            return self.gathering.target(event)
        count = self.per_round.get(event.round, 0)
        if self.max_clients is not None and count >= self.max_clients:
            return []
        self.per_round[event.round] = count + 1
        return self.gathering.target(event)

    def _aggregate(self, event: Intercept, log: TrafficView) -> list[AttackTarget]:
        # The first global model sent in round r+1 closes round r's aggregate.
        if event.direction != "down" or event.message_type != "train" or event.round is None:
            return []
        if event.round in self.global_models or not carries_model(log, event.log_id):
            return []
        self.global_models[event.round] = event.log_id
        before = self.global_models.get(event.round - 1)
        attacked = Intercept(event.log_id, event.round - 1, "up", 0, 0, "train")  # ``rounds`` name the attacked round
        if before is None or not _rounds_ok(self.rounds, attacked):
            return []
        return [AttackTarget("aggregate", event.round - 1, (before, event.log_id))]


@register_role("malicious-client")
class MaliciousClient(Role):
    """A participant: sees only the global models it receives (and its own replies).

    Between two rounds it took part in, the change of the global model is the
    average update of all participants; subtracting its own leaves the others'
    average, which it attacks. Which simulated client is malicious is chosen by
    ``partition`` (simulation bookkeeping; the role itself only learns its node id).
    """

    name = "malicious-client"

    def __init__(self, *, partition: int = 0, rounds: list[int] | None = None, context: RoleContext) -> None:
        if context.secagg:
            raise RoleError("adversary.role: malicious-client is not supported with federation.secagg yet "
                            "(its own upload is masked in the log); use curious-server")
        if len(context.placed) != 1:
            raise context.missing("partition", [partition])
        self.node = int(context.placed[0])
        self.rounds = list(rounds or [])
        self.models: dict[int, int] = {}
        self.own_reply: dict[int, int] = {}

    def sees(self, event: Intercept) -> bool:
        return event.client_node == self.node and (
            (event.direction == "down" and event.message_type == "train") or _is_update(event)
        )

    def observe(self, event: Intercept, log: TrafficView) -> list[AttackTarget]:
        if not self.sees(event) or event.round is None:
            return []
        if event.direction == "up":
            self.own_reply[event.round] = event.log_id
            return []
        self.models[event.round] = event.log_id
        prev = event.round - 1
        if prev not in self.models or prev not in self.own_reply or not _rounds_ok(self.rounds, Intercept(0, prev, "up", 0, 0, "train")):
            return []
        return [AttackTarget("aggregate", prev, (self.models[prev], event.log_id, self.own_reply[prev]), client=self.node)]


@register_role("malicious-server")
class MaliciousServer(Role):
    """Controls what the server sends (the strategy runs in the server, see
    :mod:`adversary.malicious.server`) and recovers images from the replies to the
    manipulated rounds (:mod:`adversary.methods.recoveries`). Under secure aggregation
    the replies are masked: it recovers from the round's unmasked mean update, which
    the server computes anyway. Its options also configure the strategy (``strategy``,
    ``rounds`` and the strategy's own)."""

    name = "malicious-server"

    def __init__(self, *, strategy: str = "trap-weights", rounds: list[int] | None = None, context: RoleContext,
                 **strategy_options: Any) -> None:
        self.strategy, self.rounds = strategy, list(rounds or [])
        self.secagg = context.secagg

    def sees(self, event: Intercept) -> bool:
        return True

    def observe(self, event: Intercept, log: TrafficView) -> list[AttackTarget]:
        if self.secagg or not _is_update(event) or not _rounds_ok(self.rounds, event):
            return []
        return [AttackTarget("malicious", event.round, (event.log_id,), client=event.src_node, strategy=self.strategy)]

    def observe_aggregate(self, aggregate: Any) -> list[AttackTarget]:
        """A manipulated round's unmasked mean update (secure aggregation), which the server recorded."""
        return [AttackTarget("malicious", aggregate.round, strategy=self.strategy, from_aggregate=True,
                             nodes=tuple(aggregate.nodes))]
