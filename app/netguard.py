"""Keep Flower and Ray on loopback: no telemetry, no usage stats, no cloud probes.

Flower posts telemetry and Ray reports usage and probes cloud metadata addresses
unless told not to. Both read some of these switches when they are first
imported, so the app layer applies them when it starts (``import app`` does,
before any of its modules imports Flower or Ray), and again before every engine
starts. A Flower or Ray imported earlier by other code (a test, a script that
imports the adversary directly) read the defaults: their switches are set too.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

LOOPBACK = "127.0.0.1"

OFFLINE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_USAGE_STATS_PROMPT_ENABLED": "0",
    "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
    "RAY_DEDUP_LOGS": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    # Ray otherwise replaces 127.0.0.1 by the machine's routable address (found by
    # "connecting" a UDP socket to a public DNS server) and binds its servers there.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
}


# Module-level switches the packages read from the environment when first imported: (module, name, value).
IMPORT_TIME_SWITCHES = (
    ("flwr.supercore.telemetry", "FLWR_TELEMETRY_ENABLED", OFFLINE_ENV["FLWR_TELEMETRY_ENABLED"]),
    # Off, Ray uses 127.0.0.1 as the node address instead of asking a public DNS server for a routable one.
    ("ray._private.ray_constants", "ENABLE_RAY_CLUSTER", False),
    ("ray._private.ray_constants", "RAY_ENABLE_UV_RUN_RUNTIME_ENV", False),
)


def apply_offline_env() -> None:
    """Force the no-phone-home settings (explicit values win over user ones on purpose)."""
    for key, value in OFFLINE_ENV.items():
        os.environ[key] = value
    for module_name, attr, value in IMPORT_TIME_SWITCHES:
        module = sys.modules.get(module_name)
        if module is not None:  # imported before the switch was set: it read the default then
            setattr(module, attr, value)


def _ray_home() -> Path:
    """A private HOME for Ray whose bootstrap file names a local provider.

    Ray's dashboard reads ``~/ray_bootstrap_config.yaml``; without it, it probes
    cloud metadata addresses even with usage stats off.
    """
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    home = base / "fl-sim" / "ray-home"
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError:
        home = Path(tempfile.gettempdir()) / "fl-sim-ray-home"
        home.mkdir(parents=True, exist_ok=True)
    (home / "ray_bootstrap_config.yaml").write_text("provider:\n  type: local\n")
    return home


@contextlib.contextmanager
def ray_environment() -> Iterator[None]:
    """Environment under which Ray's processes are started (they inherit it)."""
    apply_offline_env()
    saved = os.environ.get("HOME")
    os.environ["HOME"] = str(_ray_home())
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = saved
