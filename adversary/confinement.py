"""Landlock: a process takes away its own file access before it runs someone else's code.

The adversary's role process calls :func:`confine` before it imports a plug-in role. From then on
the kernel lets it read only what :func:`role_readable` lists (the Python installation, system
libraries, the modules it runs and the run's traffic log) and write only in a private scratch
folder of its own: not the ground-truth sidecar, not the log's write path, not the job book, not
another run's files.

Landlock rules only grant, and a grant covers everything below a folder, so the run directory is
kept out by never granting a folder above it: a ``sys.path`` folder that holds the run directory
(a project folder whose ``runs/`` is inside it) is replaced by the modules the process needs from it.
Where the kernel has no Landlock, :func:`confine` says why, and the run says so in its output.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from landlock import LandlockError, Ruleset
from landlock.plumbing import FSAccess, landlock_abi_version

# Folders every Python process reads from (shared libraries, locale, time zone, /proc/self).
SYSTEM_FOLDERS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc", "/proc", "/sys")
# The devices a process reads (not /dev as a whole: /dev/shm holds other processes' shared memory).
SYSTEM_DEVICES = ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom")
_FILE_READ = FSAccess.READ_FILE | FSAccess.EXECUTE
_FOLDER_READ = _FILE_READ | FSAccess.READ_DIR


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _module_paths(name: str) -> list[Path]:
    """Where a top-level module's code is (its package folder, or its file and that folder's
    ``__pycache__``), found without running it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return [Path(p) for p in spec.submodule_search_locations]
    if spec.origin and os.path.isabs(spec.origin):
        origin = Path(spec.origin)
        return [origin, origin.parent / "__pycache__"]
    return []


def role_readable(hidden: Path | None, traffic: Path | None, modules: Iterable[str]) -> list[Path]:
    """What the role process may read: the traffic log (if any), and outside ``hidden`` (the run
    directory; None before a run exists) the system, the interpreter, every ``sys.path`` entry that
    does not hold ``hidden``, and the code of ``modules`` (top-level names) wherever it is."""
    hidden = hidden.resolve() if hidden is not None else None
    wanted = [Path(p) for p in SYSTEM_FOLDERS + SYSTEM_DEVICES]
    wanted += [Path(p) for p in {sys.prefix, sys.base_prefix, sys.exec_prefix}]
    wanted += [Path(p) for p in sys.path if p]
    for name in modules:
        wanted += _module_paths(name)
    readable = [traffic.resolve()] if traffic is not None else []
    for path in wanted:
        try:
            real = path.resolve(strict=True)
        except OSError:
            continue  # a folder this system does not have
        shares = hidden is not None and (_inside(hidden, real) or _inside(real, hidden))
        if not shares and real not in readable:
            readable.append(real)
    return readable


def landlock_unavailable() -> str | None:
    """Why this kernel cannot confine a process (None when it can)."""
    if not sys.platform.startswith("linux"):
        return f"Landlock is Linux's; this is {sys.platform}"
    try:
        ctypes.set_errno(0)  # the landlock package reads errno after a successful call too
        version = landlock_abi_version()
    except (LandlockError, OSError) as exc:
        return f"the kernel has no Landlock ({str(exc).splitlines()[-1].removeprefix('Note: ')})"
    return None if version >= 1 else "the kernel has no Landlock"


def confine(readable: Iterable[Path], scratch: Path | None = None) -> str | None:
    """Restrict this process, for good, to reading ``readable`` and writing nothing but in the
    private folder ``scratch`` (its temporary files); files already open stay usable. Returns None
    once confined, or why the kernel would not."""
    if (why := landlock_unavailable()) is not None:
        return why
    try:
        ctypes.set_errno(0)
        ruleset = Ruleset()
        for path in readable:
            ctypes.set_errno(0)
            ruleset.allow(path, rules=_FOLDER_READ if path.is_dir() else _FILE_READ)
        if scratch is not None:
            ctypes.set_errno(0)
            ruleset.allow(scratch, rules=FSAccess.all())
        ctypes.set_errno(0)
        ruleset.apply()
    except (LandlockError, OSError) as exc:
        return f"Landlock refused the rules ({str(exc).splitlines()[0]})"
    return None
