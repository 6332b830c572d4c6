"""Keep Flower and Ray on loopback: no telemetry, no usage stats, no cloud probes.

Flower posts telemetry and Ray reports usage and probes cloud metadata addresses
unless told not to. These settings must be in the environment before either
package starts a process, so the package sets them on import.
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


def apply_offline_env() -> None:
    """Force the no-phone-home settings (explicit values win over user ones on purpose)."""
    for key, value in OFFLINE_ENV.items():
        os.environ[key] = value


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


def init_ray_local(num_cpus: int | None = None, num_gpus: int | None = None, address: str | None = None) -> None:
    """Start (or join) Ray bound to loopback, with dashboard and usage stats off."""
    import ray

    if ray.is_initialized():
        return
    # Workers must import what the driver can (a user's app directory, say), as Flower
    # arranges when it starts Ray itself.
    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}}
    with ray_environment():
        if address:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False, runtime_env=runtime_env)
            return
        ray.init(
            runtime_env=runtime_env,
            _node_ip_address=LOOPBACK,
            include_dashboard=False,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            logging_level="ERROR",
            log_to_driver=False,
            configure_logging=True,
        )
