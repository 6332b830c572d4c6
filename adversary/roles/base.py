"""Adversary roles: what an adversary observes, and which observations it attacks.

A role sees the traffic as the tap reports it (one :class:`Intercept` per
message) and may read the traffic log, never the ground-truth sidecar. It turns
what it is allowed to see into :class:`AttackTarget` s; the attack service runs
them. Roles are registered by name; a user's own role plugs in as
``module:Class`` in the config without editing this project.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from adversary.traffic_log import TrafficView


class RoleError(ValueError):
    """A bad role name or option; one line naming the key."""


@dataclass(frozen=True)
class Intercept:
    """One message crossing the tap, as the adversary is told of it."""

    log_id: int
    round: int | None
    direction: str
    src_node: int
    dst_node: int
    message_type: str

    @property
    def client_node(self) -> int:
        return self.dst_node if self.direction == "down" else self.src_node


@dataclass(frozen=True)
class AttackTarget:
    """What to attack: one client's update, or an aggregate of several.

    ``kind="update"``: ``messages`` holds one client reply. ``kind="aggregate"``:
    ``messages`` holds the global models sent before and after ``round`` (and, for a
    malicious client, its own reply to subtract), see :mod:`adversary.aggregate`.
    """

    kind: str
    round: int | None
    messages: tuple[int, ...]
    client: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def key(self) -> str:
        return f"{self.kind}:{self.round}:{','.join(map(str, self.messages))}"


class Role(Protocol):
    name: str

    def observe(self, event: Intercept, log: TrafficView) -> list[AttackTarget]:
        """React to one intercepted message; return what to attack now (maybe nothing)."""
        ...

    def sees(self, event: Intercept) -> bool:
        """Whether this message is visible to the role at all."""
        ...


RoleFactory = Callable[..., Role]
ROLES: dict[str, RoleFactory] = {}


def register_role(name: str) -> Callable[[RoleFactory], RoleFactory]:
    def wrap(factory: RoleFactory) -> RoleFactory:
        ROLES[name] = factory
        return factory

    return wrap


def build_role(name: str, options: dict[str, Any], context: dict[str, Any]) -> Role:
    """A registered role by name, or a user's ``module:Class`` (called with the same arguments)."""
    from adversary.roles import builtin  # noqa: F401  (registers the built-in roles)

    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise RoleError(f"adversary.role: cannot load {name!r} ({type(exc).__name__}: {exc})") from None
    elif name in ROLES:
        factory = ROLES[name]
    else:
        raise RoleError(f"adversary.role: unknown role {name!r}; choose one of: {', '.join(sorted(ROLES))} or module:Class")
    try:
        return factory(**options, context=context)
    except TypeError as exc:
        raise RoleError(f"adversary.options: {exc}") from None
