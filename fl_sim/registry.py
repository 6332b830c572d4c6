"""Name -> factory registries, so configs pick components by string.

One kind of registry serves every pluggable part (attack components and methods,
defense parameters, roles, server strategies, aggregation rules): a module
registers its classes with ``@REGISTRY.register("name")``, and ``build``
validates the name and the options against the factory's signature, so a typo
fails with one line naming the bad key and the choices instead of deep inside a
run.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def keyword_options(factory: Any, exclude: Iterable[str] = ()) -> list[str]:
    """Keyword options ``factory`` accepts (a class: its constructor's), without ``exclude``."""
    target = factory.__init__ if isinstance(factory, type) else factory
    skip = {"self", *exclude}
    params = inspect.signature(target).parameters.values()
    return [p.name for p in params if p.name not in skip and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


class RegistryError(ValueError):
    """An unknown name or option; the message is one line listing the choices."""


class Registry(dict[str, Any]):
    """A dict of factories (classes or callables) with a registering decorator and a checked builder.

    ``error`` is the exception type raised for unknown names and options, so each
    registry reports in its own domain's terms (``ConfigError`` of the attacks, say).
    ``label``: registered classes get ``name`` and ``kind`` attributes (components describe
    themselves with them).
    """

    def __init__(self, kind: str, error: type[Exception] = RegistryError, *, label: bool = False) -> None:
        super().__init__()
        self.kind = kind
        self.error = error
        self.label = label

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(factory: T) -> T:
            self.add(name, factory)
            return factory

        return decorator

    def add(self, name: str, factory: Any) -> None:
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        if self.label and isinstance(factory, type):
            factory.name = name  # type: ignore[attr-defined]
            factory.kind = self.kind  # type: ignore[attr-defined]
        self[name] = factory

    def choices(self) -> str:
        return ", ".join(sorted(self)) or "(none registered)"

    def lookup(self, name: str) -> Any:
        if name not in self:
            raise self.error(f"unknown {self.kind} {name!r}; choose one of: {self.choices()}")
        return self[name]

    def options(self, name: str, exclude: Iterable[str] = ()) -> list[str]:
        """Keyword options the factory accepts (a class: its constructor's)."""
        return keyword_options(self.lookup(name), exclude)

    def check_options(self, name: str, options: Iterable[str], exclude: Iterable[str] = ()) -> None:
        accepted = self.options(name, exclude)
        for key in options:
            if key not in accepted:
                raise self.error(
                    f"{self.kind} {name!r}: unknown option {key!r}; choose one of: {', '.join(accepted) or '(none)'}"
                )

    def build(self, name: str, **options: Any) -> Any:
        self.check_options(name, options)
        return self[name](**options)
