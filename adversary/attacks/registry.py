"""Name -> component registries, so presets and configs pick parts by string.

Each component module registers its classes with ``@REGISTRY.register("name")``;
``build`` validates the name and the options against the constructor, so a typo in
a preset fails with one line naming the bad key and the choices instead of deep
inside an attack run.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A preset, override or component option that does not exist."""


class Registry(dict[str, type]):
    """A dict of component classes with a registering decorator and a checked builder."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def decorator(cls: type[T]) -> type[T]:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            cls.name = name  # type: ignore[attr-defined]
            cls.kind = self.kind  # type: ignore[attr-defined]
            self[name] = cls
            return cls

        return decorator

    def lookup(self, name: str) -> type:
        if name not in self:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(sorted(self))}")
        return self[name]

    def options(self, name: str) -> list[str]:
        """Keyword options the component's constructor accepts."""
        params = inspect.signature(self.lookup(name).__init__).parameters.values()
        return [p.name for p in params if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]

    def build(self, name: str, **options: Any) -> Any:
        accepted = self.options(name)
        for key in options:
            if key not in accepted:
                raise ConfigError(
                    f"{self.kind} {name!r}: unknown option {key!r}; choose one of: {', '.join(accepted) or '(none)'}"
                )
        return self[name](**options)


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
