"""Which process is which, read from ``/proc``: a claim that outlives its process, and a tree to end.

A pid alone names a different process once it is reused; a pid with the process's start time (the
kernel's clock ticks since boot, field 22 of ``/proc/PID/stat``) names one process for good. Where
there is no ``/proc`` the start time is unknown and a pid that exists counts as alive.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

PROC = Path("/proc")


def _stat(pid: int) -> list[str] | None:
    """Fields 3 on of ``/proc/PID/stat`` (None if the process is gone or there is no /proc)."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The name (field 2) is in parentheses and may hold spaces: split after its closing one.
    return stat.rsplit(")", 1)[-1].split()


def start_time(pid: int) -> int | None:
    """The process's start (clock ticks since boot); None if it is gone or there is no /proc."""
    fields = _stat(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def parent(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields and len(fields) > 1 else None


def token(pid: int | None = None) -> str:
    """``host:pid:start``, naming this process (or ``pid``) and no other, on this machine or another."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{start_time(pid) or 0}"


def is_alive(claim: str) -> bool:
    """Whether the process a :func:`token` names still runs. A process on another host cannot be
    checked from here: it counts as alive, so nothing is taken from it."""
    host, _, rest = claim.partition(":")
    pid_text, _, start_text = rest.partition(":")
    if host != socket.gethostname():
        return True
    try:
        pid, start = int(pid_text), int(start_text)
    except ValueError:
        return False  # not a token this code wrote: nothing holds it
    if PROC.is_dir():
        return start_time(pid) == start if start else start_time(pid) is not None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def descendants(pid: int) -> list[int]:
    """The process's children, theirs, and so on, as ``/proc`` shows them now (empty without /proc)."""
    children: dict[int, list[int]] = {}
    try:
        entries = [int(p.name) for p in PROC.iterdir() if p.name.isdigit()]
    except OSError:
        return []
    for child in entries:
        up = parent(child)
        if up is not None:
            children.setdefault(up, []).append(child)
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
