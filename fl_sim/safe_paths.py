"""Paths that come out of files someone else may have written: followed only when they are plain.

Run directories are shared. An index, a sidecar or a job book names files inside its own folder;
a reader follows such a name only when it has the form the writer gives it, stays inside that
folder and crosses no link, so a tampered file cannot point a reader at another file on the machine.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")  # no separator, no NUL, no leading dot: not ".."


def is_plain_name(value: object) -> bool:
    return isinstance(value, str) and PLAIN_NAME.fullmatch(value) is not None


def file_inside(root: Path, rel: object, form: re.Pattern[str]) -> Path | None:
    """``root / rel`` if ``rel`` has the ``form`` its writer gives it and names a regular file reached
    through no link below ``root``; None otherwise."""
    if not isinstance(rel, str) or form.fullmatch(rel) is None:
        return None
    path = root
    for part in Path(rel).parts:
        if part in ("", ".", "..") or Path(part).is_absolute():
            return None
        path = path / part
        if path.is_symlink():
            return None
    return path if path.is_file() else None


def output_folder_problem(folder: Path) -> str | None:
    """Why outputs could not be written below ``folder`` (None when they can), checked before any work
    starts: a file on the way, or a nearest existing folder this process cannot write to."""
    if "\x00" in str(folder):
        return "must not contain a NUL byte"
    for parent in (folder, *folder.parents):
        if parent.exists():
            if not parent.is_dir():
                return f"{parent} is a file, not a folder"
            try:  # a probe, not os.access: that says yes to root on a read-only mount
                with tempfile.TemporaryFile(dir=parent):
                    pass
            except OSError as exc:
                return f"{parent} is not writable ({exc.strerror or type(exc).__name__})"
            return None
    return None
