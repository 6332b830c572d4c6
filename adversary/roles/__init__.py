"""Adversary roles (eavesdropper, curious server, malicious client) by name or module:Class."""

from adversary.roles.base import ROLES, AttackTarget, Intercept, Role, RoleError, build_role, register_role

__all__ = ["ROLES", "AttackTarget", "Intercept", "Role", "RoleError", "build_role", "register_role"]
