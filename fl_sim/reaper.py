"""A watchdog that ends the processes a run started when the run itself is killed.

Ray's head processes are children of the process that called ``ray.init``; its agents and workers
are the raylet's. SIGKILL the driver and some of them (the RuntimeEnvAgent and DashboardAgent, in
6 of 8 kills) live on, re-parented to init, holding memory and ports. Nothing in the killed
process can act, so a separate one does: :class:`Reaper` starts ``python -m fl_sim.reaper TOKEN``
in a session of its own, which notes the driver's descendants that match (Ray's, by their command
line) every quarter second while the driver runs. When the driver is gone, without having said
``stop``, it ends what it noted and their children: SIGTERM, then SIGKILL after a grace period.
A run that joins an existing cluster starts no reaper: that cluster is not the run's to end.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from fl_sim import processes

INTERVAL_S = 0.25
GRACE_S = 3.0


def _cmdline(pid: int) -> str:
    try:
        return (processes.PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def is_ray_process(pid: int) -> bool:
    """Ray's binaries and scripts live in the ray package; its workers and agents rename themselves ``ray::...``."""
    cmd = _cmdline(pid)
    return cmd.startswith("ray::") or f"{os.sep}ray{os.sep}" in cmd


def _noted(driver_pid: int, seen: dict[int, int]) -> None:
    for pid in processes.descendants(driver_pid):
        if pid not in seen and is_ray_process(pid):
            start = processes.start_time(pid)
            if start is not None:
                seen[pid] = start


def reap(seen: dict[int, int], grace_s: float = GRACE_S) -> list[int]:
    """End the noted processes that still run (the same pid and start time) and their descendants."""
    targets = {pid for pid, start in seen.items() if processes.start_time(pid) == start}
    for pid in list(targets):
        targets.update(processes.descendants(pid))
    starts = {pid: processes.start_time(pid) for pid in targets}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [pid for pid in targets if starts[pid] is not None and processes.start_time(pid) == starts[pid]]
        for pid in alive:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + (grace_s if sig == signal.SIGTERM else 0)
        while time.monotonic() < deadline and any(processes.start_time(p) == starts[p] for p in alive):
            time.sleep(0.05)
    return sorted(targets)


def watch(driver: str, interval_s: float = INTERVAL_S) -> list[int]:
    """Note the driver's Ray processes until it says ``stop`` on stdin (nothing to do) or dies (reap)."""
    driver_pid = int(driver.split(":")[1])
    seen: dict[int, int] = {}
    stdin_open = True
    while processes.is_alive(driver):
        _noted(driver_pid, seen)
        if not stdin_open:
            time.sleep(interval_s)
            continue
        ready, _, _ = select.select([sys.stdin], [], [], interval_s)
        if ready:
            line = sys.stdin.readline()
            if line.strip() == "stop":
                return []
            if line == "":
                stdin_open = False  # the pipe closed: the driver died, or a fork of it holds the pipe; polled from now on
    return reap(seen)


class Reaper:
    """The driver's handle on its watchdog: :meth:`stop` when the run ends normally."""

    def __init__(self) -> None:
        root = Path(__file__).resolve().parents[1]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        self.process = subprocess.Popen([sys.executable, "-m", "fl_sim.reaper", processes.token()], stdin=subprocess.PIPE,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)

    def stop(self) -> None:
        if self.process.poll() is None and self.process.stdin is not None:
            try:
                self.process.stdin.write(b"stop\n")
                self.process.stdin.close()
            except (BrokenPipeError, OSError):
                pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


if __name__ == "__main__":
    watch(sys.argv[1])
