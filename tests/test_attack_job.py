"""Attacks on intercepted traffic: observation, explicit grants, CLI outputs, scoring."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from adversary.attacks import infer_bn_from_update
from adversary.evaluation import Evaluator, threat_model_for
from adversary.observation import Observation, build_observation, client_updates
from adversary.roles import AttackTarget
from adversary.traffic_log import TrafficLog
from app.cli import main
from app.simulation import run_simulation
from fl_sim.deployment import load_card
from fl_sim.ground_truth import GroundTruth


def observe(run_dir: Path, msg: int) -> Observation:
    with TrafficLog.open(run_dir) as log:
        return build_observation(log, load_card(run_dir), AttackTarget("update", None, (msg,)))

CIFAR_FEDSGD = ("data.name=cifar10-sample", "model.options={width=16}", "federation.num_clients=2",
                "federation.rounds=1", "federation.protocol=fedsgd", "federation.batch_size=1")


@pytest.fixture(scope="module")
def fedsgd_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import tiny_config

    return run_simulation(tiny_config(tmp_path_factory.mktemp("runs"), *CIFAR_FEDSGD)).run_dir


def test_cli_attack_reconstructs_intercepted_update(fedsgd_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["attack", str(fedsgd_run), "--round", "1", "--all", "--preset", "inverting-gradients",
                 "--set", "attack.iterations=150"])
    assert code == 0, capsys.readouterr().err
    outputs = sorted((fedsgd_run / "attacks").iterdir())
    assert len(outputs) == 2
    for out in outputs:
        assert {"grid.png", "loss.png", "loss.csv", "metrics.json", "attack.json", "reconstruction.safetensors"} <= {p.name for p in out.iterdir()}
        metrics = json.loads((out / "metrics.json").read_text())
        # A random image scores about 0.4 LPIPS against these; 150 iterations get well below.
        assert metrics["lpips_avg"] < 0.3, metrics["lpips_avg"]
        assert metrics["label_accuracy"] == 1.0
        assert metrics["device"] == ("cpu" if not torch.cuda.is_available() else metrics["device"])
        attack = json.loads((out / "attack.json").read_text())
        assert attack["threat_model"]["labels"] == "known" and attack["resolved"]["iterations"] == 150
    assert "LPIPS avg" in capsys.readouterr().out


def test_attacker_view_needs_no_ground_truth(fedsgd_run: Path, tmp_path: Path) -> None:
    """Without grants the attack runs from the traffic alone (sidecar removed)."""
    copy = tmp_path / "run"
    shutil.copytree(fedsgd_run, copy, ignore=shutil.ignore_patterns("attacks"))
    shutil.rmtree(copy / "ground_truth")
    msg = client_updates(TrafficLog.open(copy), round=1)[0].id
    obs = observe(copy, msg)
    assert obs.update_kind == "gradient" and obs.num_examples == 1 and obs.local["batch_size"] == 1
    tm = threat_model_for(obs, {"labels": "infer"})
    inputs = Evaluator(copy, None).grant(obs, tm)
    assert inputs.labels is None and inputs.bn_exact is None
    code = main(["attack", str(copy), "--msg", str(msg), "--preset", "idlg", "--set", "attack.iterations=5",
                 "--set", "threat.labels=infer"])
    assert code == 0
    metrics = json.loads(next((copy / "attacks").iterdir()).joinpath("metrics.json").read_text())
    assert "lpips_avg" not in metrics  # nothing to score against


def test_grants_hand_over_exactly_what_is_granted(fedsgd_run: Path) -> None:
    msg = client_updates(TrafficLog.open(fedsgd_run), round=1)[0].id
    obs = observe(fedsgd_run, msg)
    evaluator = Evaluator(fedsgd_run, GroundTruth.open(fedsgd_run))
    known = evaluator.grant(obs, threat_model_for(obs))
    assert torch.equal(known.labels, evaluator.private(obs).labels)
    unknown = evaluator.grant(obs, threat_model_for(obs, {"labels": "unknown"}))
    assert unknown.labels is None


def test_fedsgd_running_stats_reveal_exact_batch_statistics(tmp_path: Path) -> None:
    """Without FedBN a FedSGD reply carries new running stats: BN 'infer' recovers the batch's."""
    from tests.conftest import tiny_config

    cfg = tiny_config(tmp_path, "data.name=cifar10-sample", "model.name=resnet18", "model.options={}",
                      "federation.num_clients=2", "federation.rounds=1", "federation.protocol=fedsgd",
                      "federation.batch_size=3", "federation.fedbn=false")
    run_dir = run_simulation(cfg).run_dir
    msg = client_updates(TrafficLog.open(run_dir), round=1)[0].id
    obs = observe(run_dir, msg)
    evaluator = Evaluator(run_dir, GroundTruth.open(run_dir))
    tm = threat_model_for(obs, {"bn_stats": "infer", "labels": "unknown"})
    inferred = infer_bn_from_update(evaluator.grant(obs, tm), tm)
    exact = evaluator.grant(obs, threat_model_for(obs, {"bn_stats": "exact"})).bn_exact
    assert inferred is not None and len(inferred) == len(exact) == 20
    for (m1, v1), (m2, v2) in zip(inferred, exact):
        torch.testing.assert_close(m1, m2, atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(v1, v2, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--msg", "1"], "not a client update"),
        (["--msg", "99"], "MSG_ID: no message 99"),
        (["--round", "1", "--all", "--preset", "nope"], "nope"),
        (["--round", "1", "--all", "--set", "threat.color=red"], "threat.color: unknown key"),
        (["--round", "1", "--all", "--set", "threat.labels=maybe"], "threat_model.labels"),
        (["--round", "1", "--all", "--set", "attack.iters=3"], "iters"),
        (["--round", "1", "--all", "--set", "model.x=3"], "unknown section"),
        (["--round", "1"], "--client"),
        (["--round", "7", "--all"], "no captured client update"),
    ],
)
def test_attack_cli_errors(fedsgd_run: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: str) -> None:
    code = main(["attack", str(fedsgd_run), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and expected in err and len(err.splitlines()) == 1, err
