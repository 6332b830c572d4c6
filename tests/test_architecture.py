"""The layers hold: the import contract, no cycle-dodging imports, a core without side effects,
and an attack job that sees only the traffic and the public deployment card."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adversary.job import run_job
from adversary.jobs import JobBook
from adversary.observation import client_updates
from adversary.roles import AttackTarget
from adversary.traffic_log import TrafficLog
from app.simulation import run_simulation
from fl_sim import ground_truth, task
from fl_sim.data import registry as data_registry
from tests.conftest import tiny_config

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("fl_sim", "clients", "server", "adversary", "experiments", "app")
# Imports that may sit inside a function: optional dependencies, imported only when used.
OPTIONAL = {"optuna"}


def test_import_linter_contract_holds() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    out = subprocess.run([str(lint)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "3 kept, 0 broken" in out.stdout


def test_no_import_inside_a_function_except_optional_dependencies() -> None:
    found = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            src = path.read_text()
            lines = src.splitlines()
            for node in ast.walk(ast.parse(src)):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for sub in ast.walk(node):
                    if isinstance(sub, (ast.Import, ast.ImportFrom)):
                        module = (sub.module if isinstance(sub, ast.ImportFrom) else sub.names[0].name) or ""
                        said = "optional" in lines[sub.lineno - 1]
                        if module.split(".")[0] not in OPTIONAL or not said:
                            found.append(f"{path.relative_to(REPO)}:{sub.lineno}: {ast.get_source_segment(src, sub)}")
    assert not found, "\n".join(found)


def _fresh_python(code: str) -> str:
    """``code``'s output in a new interpreter without any FLWR_/RAY_ variable set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLWR_", "RAY_"))}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_importing_the_core_changes_no_environment_variable() -> None:
    code = (
        "import json, os; before = dict(os.environ)\n"
        "import fl_sim, fl_sim.config, fl_sim.data, fl_sim.models, fl_sim.task, fl_sim.rundir, fl_sim.deployment, "
        "fl_sim.ground_truth, fl_sim.threat, fl_sim.wire, fl_sim.rounds, fl_sim.node_ids\n"
        "print(json.dumps({k: v for k, v in os.environ.items() if before.get(k) != v}))"
    )
    assert json.loads(_fresh_python(code).strip().splitlines()[-1]) == {}


def test_starting_the_app_keeps_flower_and_ray_on_loopback_even_if_they_were_imported_first() -> None:
    code = (
        "import flwr.supercore.telemetry as t, ray._private.ray_constants as rc\n"
        "first = (t.FLWR_TELEMETRY_ENABLED, rc.ENABLE_RAY_CLUSTER)\n"
        "import app, os\n"
        "print(*first, t.FLWR_TELEMETRY_ENABLED, rc.ENABLE_RAY_CLUSTER, os.environ['RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER'])"
    )
    assert _fresh_python(code).split() == ["1", "True", "0", "False", "0"]


def test_the_app_applies_its_network_guard_before_flower_or_ray_is_imported() -> None:
    code = "import app, os, sys, ray._private.ray_constants as rc; print(rc.ENABLE_RAY_CLUSTER, 'flwr' in sys.modules)"
    assert _fresh_python(code).split() == ["False", "False"]  # read from the guard's environment; import app pulls no Flower


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """From here on, loading a dataset or a task fails the test; every opening of the sidecar is counted."""
    opened: list[str] = []
    real_open = ground_truth.GroundTruth.open.__func__

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the attack job loaded a dataset or the run's task")

    def counted(cls: type, run_dir: object) -> object:
        opened.append(str(run_dir))
        return real_open(cls, run_dir)

    monkeypatch.setattr(data_registry, "_load_cached", refuse)
    monkeypatch.setattr(task, "_task_from_json", refuse)
    monkeypatch.setattr(ground_truth.GroundTruth, "open", classmethod(counted))
    return opened


@pytest.mark.parametrize(
    "role",
    [
        ["adversary.role=eavesdropper"],  # one client's update
        ["adversary.role=malicious-client", "adversary.threat.bn_stats=none"],  # the aggregate between global models
        ["adversary.role=malicious-server", "model.name=mlp", "model.options={}", "adversary.options.strategy=trap-weights"],
    ],
    ids=["update", "aggregate", "malicious-recovery"],
)
def test_an_attack_job_never_loads_a_dataset_and_opens_the_sidecar_once(tmp_path: Path, role: list[str],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    config = tiny_config(tmp_path, "federation.protocol=fedsgd", "federation.batch_size=2", "adversary.attack.iterations=3",
                         "adversary.max_attacks=1", *role)
    run_dir = run_simulation(config, quiet=True).run_dir
    job = JobBook(run_dir).jobs()[0]
    opened = _spy(monkeypatch)
    outcome = run_job(run_dir, job.target, job.preset, attack_overrides={"iterations": 3}, threat=job.threat)
    assert len(opened) == 1
    assert outcome.metrics["num_images"] >= 1 and (outcome.out_dir / "grid.png").is_file()


def test_an_attack_needs_only_the_traffic_and_the_deployment_card(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = run_simulation(tiny_config(tmp_path, "federation.protocol=fedsgd", "federation.batch_size=2"), quiet=True).run_dir
    msg = client_updates(TrafficLog.open(run_dir), round=1)[0].id
    for private in ("config.json", "config.toml", "partitions.json"):  # the attacker never reads the run's config
        (run_dir / private).unlink()
    opened = _spy(monkeypatch)
    outcome = run_job(run_dir, AttackTarget("update", None, (msg,)), "inverting-gradients", attack_overrides={"iterations": 3})
    assert len(opened) == 1 and outcome.metrics["label_accuracy"] == 1.0
