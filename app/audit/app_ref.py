"""Find and import a user's Flower app: an app directory or two ``module:attr`` refs.

An app directory is what ``flwr new`` makes: ``pyproject.toml`` names the
components under ``[tool.flwr.app.components]`` and the run config defaults under
``[tool.flwr.app.config]``.
"""

from __future__ import annotations

import importlib
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

COMPONENTS = ("serverapp", "clientapp")


class AuditError(ValueError):
    """Anything about the audited app that the user can fix; one line."""


@dataclass(frozen=True)
class FlowerAppSpec:
    serverapp: str
    clientapp: str
    root: Path | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    num_supernodes: int | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "root": str(self.root) if self.root else None,
            "serverapp": self.serverapp,
            "clientapp": self.clientapp,
            "defaults": self.defaults,
        }


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flower flattens nested run-config tables into dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def load_app_spec(app: str, clientapp: str | None = None) -> FlowerAppSpec:
    """``app`` is an app directory, or (with ``clientapp``) a ServerApp ``module:attr``."""
    if clientapp is not None:
        for name, ref in (("serverapp", app), ("clientapp", clientapp)):
            if ":" not in ref:
                raise AuditError(f"{name}: expected module:attribute, got {ref!r}")
        return FlowerAppSpec(serverapp=app, clientapp=clientapp)
    root = Path(app).resolve()
    if not root.is_dir():
        raise AuditError(f"APP: no such app directory: {app} (or give SERVERAPP CLIENTAPP as module:attr)")
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        raise AuditError(f"APP: {root} has no pyproject.toml")
    try:
        meta = tomllib.loads(pyproject.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise AuditError(f"APP: {pyproject} is not valid TOML ({exc})") from None
    flwr_app = meta.get("tool", {}).get("flwr", {}).get("app", {})
    components = flwr_app.get("components", {})
    for name in COMPONENTS:
        if not isinstance(components.get(name), str):
            raise AuditError(f"APP: {pyproject} lacks [tool.flwr.app.components] {name} = \"module:attr\"")
    federations = meta.get("tool", {}).get("flwr", {}).get("federations", {})
    default_fed = federations.get(federations.get("default", ""), {})
    nodes = default_fed.get("options", {}).get("num-supernodes")
    return FlowerAppSpec(
        serverapp=components["serverapp"],
        clientapp=components["clientapp"],
        root=root,
        defaults=_flatten(flwr_app.get("config", {})),
        num_supernodes=nodes if isinstance(nodes, int) else None,
    )


def import_component(ref: str, kind: str, expected: type, root: Path | None) -> Any:
    """Import ``module:attr`` (from the app root if given) and check its type."""
    if root is not None and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a user module can fail to import in any way
        raise AuditError(f"{kind}: cannot import {module_name!r} ({type(exc).__name__}: {exc})") from None
    if not hasattr(module, attr):
        raise AuditError(f"{kind}: module {module_name!r} has no attribute {attr!r}")
    obj = getattr(module, attr)
    if not isinstance(obj, expected):
        raise AuditError(f"{kind}: {ref} is a {type(obj).__name__}, not a {expected.__name__}")
    return obj
