"""Adversary roles: what each one sees, plug-in roles, job book, resume, Ray workers."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from adversary.confinement import landlock_unavailable
from adversary.jobs import JobBook
from adversary.roles import Intercept, RoleContext, RoleError, build_role, check_role
from adversary.traffic_log import TrafficLog, TrafficView
from app.cli import main
from app.simulation import run_simulation, validate_adversary
from fl_sim.config import ConfigError
from fl_sim.ground_truth import GroundTruth
from fl_sim.node_ids import node_ids_for
from tests.conftest import TINY

BASE = ("data.name=cifar10-sample", "model.options={width=8}", "federation.num_clients=3", "federation.rounds=3",
        "federation.protocol=fedsgd", "federation.batch_size=1")


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import tiny_config

    return run_simulation(tiny_config(tmp_path_factory.mktemp("runs"), *BASE)).run_dir


def _replay(run_dir: Path, role_name: str, options: dict, secagg: bool = False):
    """Feed a role every logged message in order, as the tap would; collect what it sees and targets."""
    nodes = node_ids_for(0, 3)
    role = build_role(role_name, options, RoleContext.for_simulation(secagg, options, nodes))
    log = TrafficLog.open(run_dir)
    seen, targets = [], []
    for m in log.messages():
        event = Intercept(m.id, m.round, m.direction, m.src_node, m.dst_node, m.message_type)
        if role.sees(event):
            seen.append(m)
        targets += role.observe(event, TrafficView(log))
    return nodes, seen, targets


def test_eavesdropper_sees_only_its_tapped_link(plain_run: Path) -> None:
    _nodes, seen, targets = _replay(plain_run, "eavesdropper", {"links": 1})
    links = {m.client_node for m in seen}
    assert len(links) == 1
    assert {m.direction for m in seen} == {"up", "down"}
    assert len(targets) == 3 and all(t.kind == "update" and t.client in links for t in targets)
    _n, seen_up, _t = _replay(plain_run, "eavesdropper", {"links": 2, "directions": ["up"]})
    assert {m.direction for m in seen_up} == {"up"} and len({m.client_node for m in seen_up}) == 2


def test_curious_server_sees_every_update(plain_run: Path) -> None:
    _nodes, seen, targets = _replay(plain_run, "curious-server", {})
    assert len(seen) == len(TrafficLog.open(plain_run))
    assert len(targets) == 9 and {t.kind for t in targets} == {"update"}


def test_curious_server_under_secagg_attacks_only_aggregates(plain_run: Path) -> None:
    _nodes, _seen, targets = _replay(plain_run, "curious-server", {}, secagg=True)
    assert [t.kind for t in targets] == ["aggregate", "aggregate"]
    assert [t.round for t in targets] == [1, 2]


def test_malicious_client_sees_only_its_global_models_and_own_replies(plain_run: Path) -> None:
    nodes, seen, targets = _replay(plain_run, "malicious-client", {"partition": 1})
    assert {m.client_node for m in seen} == {nodes[1]}
    assert all((m.direction, m.message_type) in {("down", "train"), ("up", "train")} for m in seen)
    assert [t.kind for t in targets] == ["aggregate", "aggregate"]
    assert all(t.client == nodes[1] and len(t.messages) == 3 for t in targets)


def test_roles_never_open_the_ground_truth(plain_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*_a, **_k):
        raise AssertionError("a role touched the ground-truth sidecar")

    for name in ("open", "batch_for", "batch_for_round", "partition_of", "node_partitions"):
        monkeypatch.setattr(GroundTruth, name, forbidden)
    for role, opts in (("eavesdropper", {"links": 3}), ("curious-server", {}), ("malicious-client", {"partition": 0})):
        _replay(plain_run, role, opts)
    view = TrafficView(TrafficLog.open(plain_run))
    assert not hasattr(view, "root") and not hasattr(view, "__dict__")


@pytest.mark.parametrize("role", ["eavesdropper", "curious-server", "malicious-client"])
def test_run_with_role_produces_attacks_while_training(tiny, role: str) -> None:
    """On the embedded default data (MNIST digits)."""
    cfg = tiny("federation.protocol=fedsgd", "federation.batch_size=1", "federation.rounds=3", f"adversary.role={role}",
               "adversary.attack.iterations=20", "adversary.workers=2")
    out = run_simulation(cfg)
    book = JobBook(out.run_dir)
    jobs = book.jobs()
    assert jobs and all(j.state == "done" for j in jobs)
    for job in jobs:
        metrics = json.loads((Path(job.out_dir) / "metrics.json").read_text())
        assert metrics["target"]["kind"] == ("aggregate" if role == "malicious-client" else "update")
        assert metrics["lpips_avg"] is not None


def test_role_plugs_in_from_an_outside_module(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_roles.py").write_text(textwrap.dedent("""
        from adversary.roles import AttackTarget, Role

        class LastRoundOnly(Role):
            name = "last-round-only"
            def __init__(self, *, round, context):
                self.round = round
            def sees(self, event):
                return True
            def observe(self, event, log):
                if event.direction == "up" and event.message_type == "train" and event.round == self.round:
                    return [AttackTarget("update", event.round, (event.log_id,), client=event.src_node)]
                return []
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = tiny(*BASE, "adversary.role=my_roles:LastRoundOnly", "adversary.options={round=3}", "adversary.attack.iterations=5")
    out = run_simulation(cfg)
    jobs = JobBook(out.run_dir).jobs()
    assert len(jobs) == 3 and {j.target.round for j in jobs} == {3}
    sys.modules.pop("my_roles", None)


def test_pending_attacks_are_kept_and_resumed(tiny, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tiny(*BASE, "adversary.role=eavesdropper", "adversary.attack.iterations=300", "adversary.wait=false")
    out = run_simulation(cfg)
    states = [j.state for j in JobBook(out.run_dir).jobs()]
    assert len(states) == 3 and "pending" in states  # the last update arrives just before the run ends
    assert main(["attack", str(out.run_dir), "--resume"]) == 0
    assert "unfinished attacks" in capsys.readouterr().out
    assert {j.state for j in JobBook(out.run_dir).jobs()} == {"done"}


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("adversary.role=spy", "adversary.role: unknown role 'spy'"),
        ("adversary.role=nosuchmod:Role", "adversary.role: cannot load"),
        ("adversary.options={links=0}", "adversary.options.links"),
        ("adversary.threat={colour=1}", "adversary.threat.colour: unknown key"),
    ],
)
def test_role_config_errors(tiny, override: str, expected: str) -> None:
    role = [] if override.startswith("adversary.role") else ["adversary.role=eavesdropper"]
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        run_simulation(tiny(*BASE, *role, override))


def test_a_config_naming_a_callable_that_is_not_a_role_gets_it_refused_uncalled(tiny, tmp_path: Path,
                                                                                capsys: pytest.CaptureFixture[str]) -> None:
    kept = tmp_path / "kept.txt"
    kept.write_text("precious")
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(f'[adversary]\nrole = "logging:basicConfig"\noptions = {{ filename = "{kept}", filemode = "w" }}\n')
    assert main(["run", "--config", str(cfg_file), *[f"--set={o}" for o in (*TINY, *BASE)], f"--set=out_dir={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a subclass of adversary.roles.Role" in err, err
    assert kept.read_text() == "precious" and not (tmp_path / "runs").exists()


def test_a_plug_in_role_is_not_even_imported_by_the_run_that_validates_it(tiny, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A config's plug-in is checked in a confined role process: its module-level code never runs in the driver."""
    (tmp_path / "import_time_roles.py").write_text(textwrap.dedent(f"""
        from pathlib import Path
        from adversary.roles import Role
        try:
            Path({str(tmp_path / "marker.txt")!r}).write_text("module code ran")
        except PermissionError:
            pass  # confined: it cannot write outside its scratch folder
        class Quiet(Role):
            def __init__(self, *, volume=1, context):
                pass
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    validate_adversary(tiny(*BASE, "adversary.role=import_time_roles:Quiet", "adversary.options={volume=3}"))
    assert "import_time_roles" not in sys.modules
    if landlock_unavailable() is None:
        assert not (tmp_path / "marker.txt").exists()
    with pytest.raises(ConfigError, match="adversary.options.colour: the role import_time_roles:Quiet does not take it"):
        validate_adversary(tiny(*BASE, "adversary.role=import_time_roles:Quiet", "adversary.options={colour=3}"))


def test_a_plug_in_role_is_not_called_while_the_config_is_validated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "loud_roles.py").write_text(textwrap.dedent("""
        from adversary.roles import Role
        CALLS = []
        class Loud(Role):
            def __init__(self, *, volume=1, context):
                CALLS.append(volume)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    check_role("loud_roles:Loud", {"volume": 3}, RoleContext())  # as the role process runs it
    import loud_roles  # type: ignore[import-not-found]
    assert loud_roles.CALLS == []
    with pytest.raises(RoleError, match="adversary.options.colour: the role loud_roles:Loud does not take it"):
        check_role("loud_roles:Loud", {"colour": 3}, RoleContext())
    (tmp_path / "bad_roles.py").write_text("from adversary.roles import Role\nclass Bad(Role):\n    def __init__(self, *, context):\n        raise KeyError('boom')\n")
    with pytest.raises(RoleError, match="could not be built with adversary.options \\{\\} \\(KeyError: 'boom'\\)"):
        build_role("bad_roles:Bad", {}, RoleContext())
    for name in ("loud_roles", "bad_roles"):
        sys.modules.pop(name, None)


FLAKY = '''
from adversary.roles import AttackTarget, Role


class Flaky(Role):
    """Attacks the first update it sees, then raises on the next message."""

    def __init__(self, *, context):
        self.seen = 0

    def sees(self, event):
        return True

    def observe(self, event, log):
        if self.seen:
            raise KeyError("second message")
        if event.direction == "up" and event.message_type == "train":
            self.seen += 1
            return [AttackTarget("update", event.round, (event.log_id,), client=event.src_node)]
        return []


class Broken(Role):
    def __init__(self, *, context):
        raise RuntimeError("cannot start\\nsecond line")
'''


@pytest.mark.parametrize("engine", ["inline", "ray"])
def test_a_failing_role_is_recorded_and_training_goes_on(engine: str, tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "flaky_roles.py").write_text(FLAKY)
    monkeypatch.syspath_prepend(str(tmp_path))
    ray = ["engine.name=ray", "federation.num_clients=2"] if engine == "ray" else []
    cfg = tiny(*BASE, *ray, "federation.rounds=2", "adversary.role=flaky_roles:Flaky", "adversary.attack.iterations=3")
    out = run_simulation(cfg)
    assert len(out.result.rounds) == 2
    summary = json.loads((out.run_dir / "summary.json").read_text())
    assert summary["role_faults"] == ["role flaky_roles:Flaky failed (observe): KeyError: 'second message'"]
    assert [j.state for j in JobBook(out.run_dir).jobs()] == ["done"]  # what it scheduled before failing still ran
    assert "adversary: role flaky_roles:Flaky failed (observe)" in capsys.readouterr().err
    if engine == "inline":  # a constructor that raises: no role, the run trains on, the failure named once
        out = run_simulation(tiny(*BASE, "federation.rounds=1", "adversary.role=flaky_roles:Broken"))
        summary = json.loads((out.run_dir / "summary.json").read_text())
        assert summary["role_faults"] == ["role flaky_roles:Broken failed (built): adversary.role: flaky_roles:Broken could "
                                          "not be built with adversary.options {} (RuntimeError: cannot start)"]
        assert summary["rounds"] == 1 and JobBook(out.run_dir).jobs() == []
    sys.modules.pop("flaky_roles", None)


def test_malicious_client_partition_must_exist() -> None:
    with pytest.raises(RoleError, match="adversary.options.partition"):
        build_role("malicious-client", {"partition": 7}, RoleContext.for_simulation(False, {"partition": 7}, [11, 12]))


def test_crashed_ray_worker_is_restarted_and_its_attack_retried(plain_run: Path, tmp_path: Path) -> None:
    """Kill an attack worker mid-attack: Ray restarts it, retries the optimisation once, the result arrives
    at the desk, which alone writes the run directory."""
    import shutil
    import time

    import ray

    from adversary.remote import JobDesk
    from adversary.roles import AttackTarget
    from adversary.service import execute_job
    from app.engine.ray_engine import init_ray_local

    run_dir = tmp_path / "run"
    shutil.copytree(plain_run, run_dir, ignore=shutil.ignore_patterns("attacks", "adversary"))
    msg = TrafficLog.open(run_dir).messages(direction="up")[0].id
    book = JobBook(run_dir)
    job = book.add("test", AttackTarget("update", 1, (msg,)), "inverting-gradients", {"iterations": 400}, {})
    init_ray_local(num_cpus=2)
    try:
        desk = JobDesk.remote({"num_cpus": 0}, 1, execute_job)
        first_pid = ray.get(desk.worker_pids.remote())[0]
        ray.get(desk.submit.remote(str(run_dir), job))
        deadline = time.time() + 60
        while time.time() < deadline and book.jobs()[0].state != "running":
            time.sleep(0.2)
        time.sleep(2.0)
        ray.get(desk.kill_worker.remote(0))
        [result] = ray.get(desk.finish.remote(True), timeout=240)
        assert result["state"] == "done", result
        assert ray.get(desk.worker_pids.remote())[0] != first_pid
    finally:
        ray.shutdown()
    final = book.jobs()[0]
    assert final.state == "done" and final.attempts == 1  # the desk's claim held; the worker's task was retried
    assert (Path(final.out_dir) / "metrics.json").is_file()
    assert "iteration 400/400" in (run_dir / "attacks.log").read_text()  # the retried worker's progress reached the desk


def test_curious_server_under_secure_aggregation_attacks_the_aggregate(tiny) -> None:
    cfg = tiny("federation.secagg=true", "federation.upload=delta", "secagg.clipping_range=0.5", "federation.rounds=3",
               "federation.local_steps=1", "federation.batch_size=2", "adversary.role=curious-server",
               "adversary.attack.iterations=5", "adversary.threat.bn_stats=none")
    out = run_simulation(cfg)
    jobs = JobBook(out.run_dir).jobs()
    assert [j.target.kind for j in jobs] == ["aggregate", "aggregate"], [(j.state, j.error) for j in jobs]
    assert {j.state for j in jobs} == {"done"}, [j.error for j in jobs]
    metrics = json.loads((Path(jobs[0].out_dir) / "metrics.json").read_text())
    assert metrics["num_images"] == 6 and len(metrics["target"]["aggregate_of"]) == 3


def test_malicious_client_refuses_secure_aggregation() -> None:
    with pytest.raises(RoleError, match="secagg"):
        build_role("malicious-client", {"partition": 0}, RoleContext.for_simulation(True, {"partition": 0}, [11, 12]))
