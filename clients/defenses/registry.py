"""Name -> defense registry and validation of the ``defenses`` config list.

A defense module declares its typed parameters (a subclass of
:class:`fl_sim.config.DefenseParams` with ``name: Literal["..."]``) and registers
its class with :func:`register_defense`; nothing else needs to change to add one.
This module imports no torch, so config validation stays light.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

Kind = Literal["encoder", "step", "update", "vet"]
KIND_DOC = {
    "encoder": "batch encoder (acts on the (x, y) batch before the local step)",
    "step": "gradient step (replaces how a batch's gradient is computed)",
    "update": "update transform (acts on the outgoing gradient/update)",
    "vet": "model vetting (inspects the received model before training)",
}

# Modules that register defenses; imported on first use.
_MODULES = (
    "clients.defenses.gradprune",
    "clients.defenses.mixup",
    "clients.defenses.instahide",
    "clients.defenses.dp",
    "clients.defenses.vetting",
)


@dataclass(frozen=True)
class DefenseSpec:
    name: str
    kind: Kind
    params: type  # a DefenseParams subclass
    factory: Callable[..., Any]  # factory(params, build_context) -> defense object


_REGISTRY: dict[str, DefenseSpec] = {}


def register_defense(name: str, *, kind: Kind, params: type) -> Callable[[Any], Any]:
    """Class decorator: ``@register_defense("gradprune", kind="update", params=GradPruneParams)``."""

    def decorate(factory: Any) -> Any:
        if name in _REGISTRY:
            raise ValueError(f"defense {name!r} is already registered")
        _REGISTRY[name] = DefenseSpec(name, kind, params, factory)
        return factory

    return decorate


def registered() -> dict[str, DefenseSpec]:
    for module in _MODULES:
        importlib.import_module(module)
    return _REGISTRY


def available_defenses() -> list[str]:
    return sorted(registered())


def parse_defenses(value: Any) -> list[Any]:
    """Validate the raw ``defenses`` list into typed parameter models.

    Raises ``ValueError`` with one line naming the key (``defenses[1].p: ...``).
    """
    from fl_sim.config import DefenseParams, _one_line

    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise ValueError(f'defenses: expected a list of tables like [{{name="gradprune", p=0.9}}], got {value!r}')
    specs = registered()
    out: list[Any] = []
    for i, entry in enumerate(value):
        key = f"defenses[{i}]"
        if isinstance(entry, DefenseParams):
            entry = entry.model_dump()
        if not isinstance(entry, dict):
            raise ValueError(f'{key}: expected a table like {{name="gradprune", p=0.9}}, got {entry!r}')
        name = entry.get("name")
        if name is None:
            raise ValueError(f"{key}.name: required; choose one of: {', '.join(sorted(specs))}")
        if name not in specs:
            raise ValueError(f"{key}.name: unknown defense {name!r}; choose one of: {', '.join(sorted(specs))}")
        try:
            out.append(specs[name].params.model_validate(entry))
        except ValidationError as exc:
            raise ValueError(_one_line(exc, prefix=key)) from None
    _check_combination([specs[p.name] for p in out])
    return out


def _check_combination(chosen: list[DefenseSpec]) -> None:
    seen: dict[str, int] = {}
    for i, spec in enumerate(chosen):
        if spec.name in seen:
            raise ValueError(f"defenses[{i}]: {spec.name!r} is already listed at defenses[{seen[spec.name]}]")
        seen[spec.name] = i
    for kind in ("encoder", "step", "vet"):
        where = [(i, s.name) for i, s in enumerate(chosen) if s.kind == kind]
        if len(where) > 1:
            names = ", ".join(sorted(n for n, s in registered().items() if s.kind == kind))
            listed = " and ".join(f"{n} at defenses[{i}]" for i, n in where)
            raise ValueError(f"defenses: at most one {KIND_DOC[kind]} may be used ({names}); got {listed}")
