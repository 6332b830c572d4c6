"""Adversary roles (eavesdropper, curious server, malicious client and server) by name or module:Class."""

from __future__ import annotations

import importlib
from typing import Any

from adversary.roles import builtin  # noqa: F401  (registers the built-in roles)
from adversary.roles.base import ROLES, AttackTarget, Intercept, Role, RoleContext, RoleError, register_role


def build_role(name: str, options: dict[str, Any], context: RoleContext) -> Role:
    """A registered role by name, or a user's ``module:Class`` (called with the same arguments)."""
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


__all__ = ["ROLES", "AttackTarget", "Intercept", "Role", "RoleContext", "RoleError", "build_role", "register_role"]
