"""Errors as the one line a user reads: a pydantic error's key and what is allowed; any exception's type and first line."""

from __future__ import annotations

from pydantic import ValidationError


def one_line(error: ValidationError, prefix: str = "") -> str:
    """The first error as one line; ``prefix`` (e.g. ``defenses[0]``) is put before its key."""
    first = error.errors()[0]
    key = ".".join([prefix, *(str(p) for p in first["loc"])] if prefix else [str(p) for p in first["loc"]])
    kind = first["type"]
    msg = first["msg"]
    if kind == "extra_forbidden":
        return f"{key}: unknown key"
    if kind == "value_error":
        # Our own validators already phrase the message with the key.
        text = msg.removeprefix("Value error, ")
        head = text.split(" ")[0]
        if ":" in head:
            return f"{prefix}.{text}" if prefix and not head.startswith(prefix) else text
        return f"{key}: {text}"
    if kind == "missing":
        return f"{key}: required"
    if kind == "literal_error":
        allowed = first.get("ctx", {}).get("expected", "")
        return f"{key}: must be one of {allowed} (got {first.get('input')!r})"
    got = first.get("input")
    return f"{key}: {msg.lower()} (got {got!r})"


def exception_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (just ``Type`` when the message is empty): foreign code's
    errors (a plug-in, a damaged file's parser) reported in one line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
