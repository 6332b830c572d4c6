"""Adversary roles (eavesdropper, curious server, malicious client and server) by name or module:Class."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from adversary.roles import builtin  # noqa: F401  (registers the built-in roles)
from adversary.roles.base import ROLES, AttackTarget, Intercept, Role, RoleContext, RoleError, ServerAggregate, register_role
from fl_sim.registry import keyword_options
from fl_sim.validation import exception_line


def role_class(name: str) -> type[Role]:
    """The role a config names, loaded but not called: a registered name, or ``module:Class``
    naming a subclass of :class:`Role` (anything else is refused before it can run)."""
    if ":" not in name:
        if name not in ROLES:
            raise RoleError(f"adversary.role: unknown role {name!r}; choose one of: {', '.join(sorted(ROLES))} or module:Class")
        return ROLES[name]
    module_name, _, attr = name.partition(":")
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:  # a user's module can fail to import in any way
        raise RoleError(f"adversary.role: cannot load {name!r} ({exception_line(exc)})") from None
    if not (inspect.isclass(found) and issubclass(found, Role)):
        raise RoleError(f"adversary.role: {name} is a {type(found).__name__}, not a subclass of adversary.roles.Role; "
                        "a plug-in role must subclass it")
    return found


def build_role(name: str, options: dict[str, Any], context: RoleContext) -> Role:
    """The role built with its options; whatever its constructor raises is one line naming the role."""
    factory = role_class(name)
    try:
        return factory(**options, context=context)
    except RoleError:
        raise
    except Exception as exc:  # a plug-in's constructor can fail in any way
        raise RoleError(f"adversary.role: {name} could not be built with adversary.options {options} "
                        f"({exception_line(exc)})") from None


def check_role(name: str, options: dict[str, Any], context: RoleContext) -> None:
    """Validation before a run: a built-in role is built (its options checked by its own code); a
    plug-in is loaded and its options matched against its constructor's signature, but it is not
    called here: it is built only in the adversary's process."""
    if ":" not in name:
        build_role(name, options, context)
        return
    factory = role_class(name)
    if any(p.kind is p.VAR_KEYWORD for p in inspect.signature(factory.__init__).parameters.values()):
        return
    accepted = keyword_options(factory, exclude=("context",))
    for key in options:
        if key not in accepted:
            raise RoleError(f"adversary.options.{key}: the role {name} does not take it; it takes: {', '.join(accepted) or '(none)'}")


__all__ = ["ROLES", "AttackTarget", "Intercept", "Role", "RoleContext", "RoleError", "ServerAggregate", "build_role", "register_role",
           "check_role", "role_class"]
