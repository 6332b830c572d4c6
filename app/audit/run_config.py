"""The audited app's run config: its pyproject defaults plus ``--run-config`` overrides."""

from __future__ import annotations

import shlex
import tomllib
from typing import Any

from app.audit.app_ref import AuditError


def parse_run_config(text: str | None, option: str = "--run-config") -> dict[str, Any]:
    """Flower's syntax: space-separated ``key=value`` pairs, values in TOML."""
    overrides: dict[str, Any] = {}
    try:
        items = shlex.split(text or "")
    except ValueError as exc:
        raise AuditError(f"{option}: {exc}") from None
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise AuditError(f"{option}: expected key=value, got {item!r}")
        try:
            overrides[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            overrides[key] = raw
    return overrides


def merge_run_config(defaults: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Only keys the app declares may be set, with a value of the declared type."""
    merged = dict(defaults)
    for key, value in overrides.items():
        if defaults and key not in defaults:
            known = ", ".join(sorted(defaults))
            raise AuditError(f"--run-config: unknown key {key!r} for this app; it declares: {known}")
        if key in defaults:
            want = type(defaults[key])
            ok = isinstance(value, want) or (want is float and isinstance(value, int) and not isinstance(value, bool))
            if not ok:
                raise AuditError(
                    f"--run-config: {key} expects {want.__name__} (app default {defaults[key]!r}), got {value!r}"
                )
            value = want(value)
        merged[key] = value
    return merged
