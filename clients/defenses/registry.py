"""Name -> defense registry: each defense's typed parameters (in the core) and its implementation.

A defense module declares its typed parameters (a subclass of
:class:`fl_sim.config.DefenseParams` with ``name: Literal["..."]``) and registers
its class with :func:`register_defense`; that puts the parameters in the core's
:data:`fl_sim.config.DEFENSE_PARAMS` (so a run config validates its ``defenses``)
and the implementation here. Nothing else needs to change to add one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fl_sim.config import DEFENSE_KINDS, DEFENSE_PARAMS, DefenseParams
from fl_sim.registry import Registry

Kind = str  # one of DEFENSE_KINDS


@dataclass(frozen=True)
class DefenseSpec:
    name: str
    kind: Kind
    params: type[DefenseParams]
    factory: Callable[..., Any]  # factory(params, build_context) -> defense object


DEFENSES = Registry("defense")


def register_defense(name: str, *, kind: Kind, params: type[DefenseParams]) -> Callable[[Any], Any]:
    """Class decorator: ``@register_defense("gradprune", kind="update", params=GradPruneParams)``."""
    if kind not in DEFENSE_KINDS:
        raise ValueError(f"defense {name!r}: kind must be one of {', '.join(DEFENSE_KINDS)}, got {kind!r}")

    def decorate(factory: Any) -> Any:
        params.kind = kind
        DEFENSE_PARAMS.add(name, params)
        DEFENSES.add(name, DefenseSpec(name, kind, params, factory))
        return factory

    return decorate


def registered() -> dict[str, DefenseSpec]:
    return dict(DEFENSES)


def available_defenses() -> list[str]:
    return sorted(DEFENSES)
