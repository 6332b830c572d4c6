"""Headless Chromium for the report tests (Debian's package; the tests skip without it)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"

needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None,
    reason="headless Chromium not installed (/usr/bin/chromium; Debian: apt-get install chromium)",
)


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    """Run headless Chromium offline (no background networking) with a fresh profile."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
           f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)
