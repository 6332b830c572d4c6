"""The Ray engine: agreement with the inline engine, and loopback-only networking."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adversary.traffic_log import TrafficLog
from app.simulation import run_simulation
from server.rounds import FINAL_WEIGHTS
from tests.conftest import TINY, tiny_config

RAY_TINY = [a for a in TINY if not a.startswith("engine.name")] + ["engine.name=ray", "federation.num_clients=2"]


def _cli_command(out_dir: Path, *extra: str) -> list[str]:
    sets = [arg for item in [*RAY_TINY, f"out_dir={out_dir}", *extra] for arg in ("--set", item)]
    return [sys.executable, "-m", "app.cli", "run", *sets]


def _run_dir_of(cmd: list[str]) -> Path:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    match = re.search(r"run directory: (\S+)", proc.stdout)
    assert match, proc.stdout
    return Path(match.group(1))


def test_ray_and_inline_engines_agree(tmp_path: Path) -> None:
    """Same seed, same sampled clients (by node id), same batches: same final weights."""
    partial = ("federation.num_clients=3", "federation.clients_per_round=2")
    ray_dir = _run_dir_of(_cli_command(tmp_path / "ray", *partial))
    inline = run_simulation(tiny_config(tmp_path / "inline", *partial))
    a, b = load_file(str(ray_dir / FINAL_WEIGHTS)), load_file(str(inline.run_dir / FINAL_WEIGHTS))
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
    ray_log, inline_log = TrafficLog.open(ray_dir), TrafficLog.open(inline.run_dir)
    assert len(ray_log) == len(inline_log) == 8
    for rnd in (1, 2):
        picked = [m.dst_node for m in ray_log.messages(round=rnd, direction="down")]
        assert picked == [m.dst_node for m in inline_log.messages(round=rnd, direction="down")]


def _loopback_only_available() -> str | None:
    if not shutil.which("unshare") or not shutil.which("ip"):
        return "unshare/ip not installed"
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create a network namespace here: {probe.stderr.strip()}"
    return None


@pytest.mark.skipif(_loopback_only_available() is not None, reason=str(_loopback_only_available()))
def test_ray_simulation_runs_with_only_loopback(tmp_path: Path) -> None:
    """In a namespace where nothing but loopback exists, a Ray run must still succeed,
    and (where strace is installed) no process may even try an outside address."""
    command = _cli_command(tmp_path)
    trace = tmp_path / "connect.trace"
    if shutil.which("strace"):
        command = ["strace", "-f", "-qq", "-e", "trace=connect", "-o", str(trace), *command]
    inner = "ip link set lo up && exec " + " ".join(shlex.quote(a) for a in command)
    run_dir = _run_dir_of(["unshare", "-n", "sh", "-c", inner])
    assert len(TrafficLog.open(run_dir).messages(direction="up")) == 4
    if trace.exists():
        addresses = set(re.findall(r'inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)"', trace.read_text()))
        outside = {a or b for a, b in addresses} - {"127.0.0.1", "::1", "::ffff:127.0.0.1", "0.0.0.0"}
        assert not outside, f"connections attempted outside loopback: {sorted(outside)}"


def test_ray_run_with_instahide_and_gradprune_sends_only_defended_updates(tmp_path: Path) -> None:
    defenses = 'defenses=[{name="instahide",k=4},{name="gradprune",p=0.9}]'
    run_dir = _run_dir_of(_cli_command(tmp_path, defenses, "federation.protocol=fedsgd"))
    log = TrafficLog.open(run_dir)
    ups = log.messages(direction="up", message_type="train")
    assert len(ups) == 4
    for message in ups:
        for name, array in log.arrays(message.id).items():
            zeros = float((array == 0).mean())
            assert zeros >= 0.9, f"message {message.id} {name}: only {zeros:.1%} zeros"
    from fl_sim.ground_truth import GroundTruth

    step = GroundTruth.open(run_dir).batch_for(ups[0].reply_to).steps[0]
    assert {"keys/partners", "keys/coeffs", "keys/signs", "encoded"} <= set(step)


def test_ray_run_with_curious_server_attacks_on_ray_actors(tmp_path: Path) -> None:
    """The adversary runs as a named Ray actor beside Flower's clients; attacks finish before Ray stops."""
    run_dir = _run_dir_of(_cli_command(tmp_path, "adversary.role=curious-server", "adversary.attack.iterations=10",
                                       "federation.protocol=fedsgd", "federation.batch_size=1"))
    from adversary.jobs import JobBook

    jobs = JobBook(run_dir).jobs()
    assert len(jobs) == 4 and {j.state for j in jobs} == {"done"}
    assert all((Path(j.out_dir) / "grid.png").is_file() for j in jobs)


@pytest.mark.slow
def test_run_against_an_existing_ray_cluster(tmp_path: Path) -> None:
    """`ray start --head` on loopback, then a run (with an adversary) joins it via engine.ray_address."""
    import os

    from app.netguard import OFFLINE_ENV

    home = tmp_path / "home"
    home.mkdir()
    (home / "ray_bootstrap_config.yaml").write_text("provider:\n  type: local\n")
    env = {**os.environ, **OFFLINE_ENV, "HOME": str(home)}
    ray_bin = str(Path(sys.executable).parent / "ray")
    start = [ray_bin, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", "6391", "--num-cpus", "2",
             "--include-dashboard", "false", "--disable-usage-stats"]
    subprocess.run(start, check=True, capture_output=True, env=env, timeout=120)
    try:
        run_dir = _run_dir_of(_cli_command(tmp_path, "engine.ray_address=127.0.0.1:6391", "adversary.role=curious-server",
                                           "adversary.attack.iterations=5", "federation.protocol=fedsgd",
                                           "federation.batch_size=1"))
        from adversary.jobs import JobBook

        assert {j.state for j in JobBook(run_dir).jobs()} == {"done"}
    finally:
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True, env=env, timeout=120)


def _ray_processes() -> set[tuple[str, str]]:
    """(process title, the raylet it belongs to) of every Ray worker process on this machine: on one
    machine, a node is a raylet, and each worker's environment names its raylet."""
    seen = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            if not title.startswith("ray::"):
                continue
            env = dict(item.split(b"=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in item)
        except OSError:
            continue
        seen.add((title.split()[0].split(".")[0], env.get(b"RAY_RAYLET_PID", b"?").decode()))
    return seen


def _unshare_works() -> bool:
    """Whether this kernel lets an unprivileged process mount a folder of its own (user and mount namespaces)."""
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.slow
def test_a_two_node_cluster_spreads_clients_and_attack_workers_and_agrees_with_one_node(tmp_path: Path) -> None:
    """A head and a worker node (`ray start` twice on loopback, a CPU each): Flower's clients and the attack
    workers run on both, the role's actor on the driver's node, and the weights are those of one node.

    The worker node cannot see the run directory at all: it runs in a mount namespace of its own where an
    empty, read-only folder hides the runs' folder (a driver-local run directory, as on a real cluster).
    So every private batch, every attack's outputs, its progress and the job book get there through the
    driver's node, or the run fails."""
    import time

    from adversary.jobs import JobBook
    from app.netguard import OFFLINE_ENV
    from fl_sim.ground_truth import GroundTruth

    if not _unshare_works():
        pytest.skip("this kernel does not allow unprivileged mount namespaces (unshare -rm), which hide the run "
                    "directory from the worker node")
    home = tmp_path / "home"
    home.mkdir()
    (home / "ray_bootstrap_config.yaml").write_text("provider:\n  type: local\n")
    runs = tmp_path / "cluster"
    runs.mkdir()
    # the offline environment turns multi-node clusters off (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0); a worker node needs it on
    env = {k: v for k, v in {**os.environ, **OFFLINE_ENV, "HOME": str(home)}.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    ray_bin = str(Path(sys.executable).parent / "ray")
    address = "127.0.0.1:6393"
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats"]
    head = [ray_bin, "start", "--head", "--port", "6393", *common, "--resources", '{"head_node": 1}',
            "--include-dashboard", "false"]
    worker = [ray_bin, "start", "--address", address, *common, "--resources", '{"worker_node": 1}']
    hidden = ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o ro none {shlex.quote(str(runs))} && exec {shlex.join(worker)}"]
    try:
        subprocess.run(head, check=True, capture_output=True, env=env, timeout=180)
        subprocess.run(hidden, check=True, capture_output=True, env=env, timeout=180)
        settings = (f"engine.ray_address={address}", "adversary.role=curious-server", "adversary.attack.iterations=5",
                    "adversary.workers=2", "federation.protocol=fedsgd", "federation.batch_size=1")
        proc = subprocess.Popen(_cli_command(runs, *settings), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
        seen: set[tuple[str, str]] = set()
        while proc.poll() is None:
            seen |= _ray_processes()
            time.sleep(0.2)
        out, err = proc.communicate()
        assert proc.returncode == 0, out[-3000:] + err[-3000:]
        run_dir = Path(re.search(r"run directory: (\S+)", out).group(1))
        jobs = JobBook(run_dir).jobs()
        assert len(jobs) == 4 and {j.state for j in jobs} == {"done"}, [j.error for j in jobs]
        assert all((Path(j.out_dir) / "grid.png").is_file() and j.attempts == 1 for j in jobs)
        replies = TrafficLog.open(run_dir).messages(direction="up", message_type="train")
        truth = GroundTruth.open(run_dir)
        assert len(replies) == 4 and all(truth.batch_for(m.reply_to) is not None for m in replies)
        nodes = {title: {raylet for t, raylet in seen if t == title} for title, _ in seen}
        assert len(nodes.get("ray::ClientAppActor", ())) == 2, seen
        assert len(nodes.get("ray::AttackWorker", ())) == 2, seen
        assert len(nodes.get("ray::AdversaryActor", ())) == 1, seen
        assert nodes.get("ray::JobDesk") == nodes["ray::AdversaryActor"] == nodes.get("ray::GroundTruthDesk"), seen
    finally:
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True, env=env, timeout=180)
    one_node = run_simulation(tiny_config(tmp_path / "inline", "federation.num_clients=2", "federation.protocol=fedsgd",
                                          "federation.batch_size=1"))
    a, b = load_file(str(run_dir / FINAL_WEIGHTS)), load_file(str(one_node.run_dir / FINAL_WEIGHTS))
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
