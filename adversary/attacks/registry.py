"""The attack engine's configuration errors and component specs.

Component registries are the core's :class:`fl_sim.registry.Registry`, raising
:class:`ConfigError` so a bad preset, override or option reads as an attack
configuration problem.
"""

from __future__ import annotations

from typing import Any

from fl_sim.registry import Registry, RegistryError


class ConfigError(RegistryError):
    """A preset, override or component option that does not exist."""


def component_registry(kind: str) -> Registry:
    return Registry(kind, error=ConfigError, label=True)


def as_spec(spec: Any) -> tuple[str, dict[str, Any]] | Any:
    """Normalise ``"name"``, ``("name", {opts})`` or ``{"name": ..., **opts}`` to (name, opts).

    Component instances pass through unchanged.
    """
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str):
        return spec[0], dict(spec[1] or {})
    if isinstance(spec, dict):
        opts = dict(spec)
        if "name" not in opts:
            raise ConfigError(f"component spec {spec!r} needs a 'name'")
        return opts.pop("name"), opts
    return spec
