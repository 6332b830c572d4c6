"""A run that starts its own Ray leaves no process behind when it is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fl_sim import processes
from fl_sim.reaper import is_ray_process

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _wait(condition, timeout: float = 60.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def _alive(pids: dict[int, int]) -> list[int]:
    return [pid for pid, start in pids.items() if processes.start_time(pid) == start]


@pytest.fixture
def fake_driver(tmp_path: Path):
    """A 'driver' with the reaper watching it, one child that looks like Ray's and one that does not."""
    for folder in ("ray", "other"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "child.py").write_text("import time\ntime.sleep(120)\n")
    (tmp_path / "driver.py").write_text(textwrap.dedent(f"""
        import subprocess, sys, time
        from fl_sim.reaper import Reaper
        reaper = Reaper()
        kids = [subprocess.Popen([sys.executable, {str(tmp_path / 'ray' / 'child.py')!r}]),
                subprocess.Popen([sys.executable, {str(tmp_path / 'other' / 'child.py')!r}])]
        print(" ".join(str(k.pid) for k in kids), flush=True)
        if sys.argv[1:] == ["stop"]:
            time.sleep(1.0)
            reaper.stop()
            print("stopped", flush=True)
        time.sleep(120)
    """))
    started: list[subprocess.Popen] = []

    def start(*args: str) -> tuple[subprocess.Popen, int, int]:
        driver = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), *args], env=ENV, stdout=subprocess.PIPE, text=True)
        started.append(driver)
        ray_kid, other_kid = map(int, driver.stdout.readline().split())
        return driver, ray_kid, other_kid

    yield start
    for driver in started:
        for pid in processes.descendants(driver.pid):
            os.kill(pid, signal.SIGKILL)
        driver.kill()
        driver.wait()


def test_the_reaper_ends_rays_processes_of_a_killed_driver_and_nothing_else(fake_driver) -> None:
    driver, ray_kid, other_kid = fake_driver()
    starts = {ray_kid: processes.start_time(ray_kid), other_kid: processes.start_time(other_kid)}
    assert is_ray_process(ray_kid) and not is_ray_process(other_kid)
    time.sleep(1.0)  # the reaper notes the driver's children every quarter second
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert _wait(lambda: not _alive({ray_kid: starts[ray_kid]}), 15)
    assert _alive({other_kid: starts[other_kid]}) == [other_kid]  # not Ray's: not the reaper's to end
    os.kill(other_kid, signal.SIGKILL)


def test_a_driver_that_says_stop_keeps_its_processes(fake_driver) -> None:
    driver, ray_kid, _other = fake_driver("stop")
    start = processes.start_time(ray_kid)
    assert driver.stdout.readline().strip() == "stopped"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    time.sleep(1.5)
    assert _alive({ray_kid: start}) == [ray_kid]  # stopped: the reaper had gone, as after a normal run's own shutdown
    os.kill(ray_kid, signal.SIGKILL)


def test_a_killed_ray_run_leaves_no_process(tmp_path: Path) -> None:
    args = ["run", "--set", "engine.name=ray", "--set", "federation.num_clients=2", "--set", "federation.rounds=50",
            "--set", "model.options.width=8", "--set", "data.max_test=100", "--set", f"out_dir={tmp_path}"]
    run = subprocess.Popen([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    noted: dict[int, int] = {}

    def ray_workers_running() -> bool:
        for pid in processes.descendants(run.pid):
            if is_ray_process(pid) and (start := processes.start_time(pid)) is not None:
                noted[pid] = start
        return any(processes.start_time(pid) == start and "ray::" in (processes.PROC / str(pid) / "cmdline").read_text()
                   for pid, start in list(noted.items()) if processes.start_time(pid) == start)

    try:
        assert _wait(ray_workers_running, 120), "Ray never started"
        time.sleep(2.0)  # training: clients and agents up
        ray_workers_running()
        assert len(noted) >= 4  # gcs, raylet, agents, workers
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
    assert _wait(lambda: not _alive(noted), 30), [(p, processes.PROC.joinpath(str(p), "cmdline").read_bytes()[:60]) for p in _alive(noted)]
