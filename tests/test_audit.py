"""Auditing unmodified Flower apps (both API styles) under the tap."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from adversary.traffic_log import TrafficLog
from app.audit import AuditError, load_app_spec, run_audit
from app.audit.app_ref import import_component
from app.audit.run_config import merge_run_config, parse_run_config
from app.audit.runner import APP_WORKDIR, execute_app
from app.cli import main

EXAMPLES = Path(__file__).parent.parent / "examples"
APPS = {
    "message-api": ("quickstart-message-api", "final_model.pt"),
    "legacy": ("quickstart-legacy", "final_model.npz"),
}
SHORT = {"num-server-rounds": 2, "max-steps": 5}


def _weights(path: Path) -> list[np.ndarray]:
    if path.suffix == ".pt":
        return [t.numpy() for t in torch.load(path).values()]
    with np.load(path) as data:
        return [data[k] for k in sorted(data.files, key=lambda k: int(k.split("_")[1]))]


@pytest.mark.parametrize("style", sorted(APPS))
def test_audit_captures_every_message_and_does_not_change_the_app(style: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder, weights_file = APPS[style]
    spec = load_app_spec(str(EXAMPLES / folder))
    out = run_audit(spec, overrides=SHORT, engine="inline", out_dir=tmp_path / "runs")
    # 2 rounds x 2 clients x (train + evaluate) x (down + up)
    assert out.messages == 16
    log = TrafficLog.open(out.run_dir)
    ups = log.messages(direction="up", message_type="train")
    assert len(ups) == 4 and all(len(m.tensors) > 0 for m in ups)
    assert log.rounds() == [1, 2]

    # The same app, same seed, without the tap: identical final weights.
    plain = tmp_path / "plain"
    plain.mkdir()
    run_config = merge_run_config(spec.defaults, SHORT)
    execute_app(
        import_component(spec.serverapp, "serverapp", object, spec.root),
        import_component(spec.clientapp, "clientapp", object, spec.root),
        run_config, nodes=2, engine="inline", seed=0, workdir=plain,
    )
    tapped = _weights(out.run_dir / APP_WORKDIR / weights_file)
    untapped = _weights(plain / weights_file)
    assert len(tapped) == len(untapped) > 0
    assert all(np.array_equal(a, b) for a, b in zip(tapped, untapped))

    # The run directory is an ordinary one for the traffic commands.
    assert main(["traffic", "show", str(out.run_dir), str(ups[0].id)]) == 0
    shown = capsys.readouterr().out
    assert all(t.name in shown for t in ups[0].tensors)


def test_audit_with_ray_engine_matches_inline(tmp_path: Path) -> None:
    spec = load_app_spec(str(EXAMPLES / "quickstart-message-api"))
    ray_out = run_audit(spec, overrides=SHORT, engine="ray", out_dir=tmp_path / "ray")
    inline_out = run_audit(spec, overrides=SHORT, engine="inline", out_dir=tmp_path / "inline")
    assert ray_out.messages == inline_out.messages == 16
    a = _weights(ray_out.run_dir / APP_WORKDIR / "final_model.pt")
    b = _weights(inline_out.run_dir / APP_WORKDIR / "final_model.pt")
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["examples/missing"], "APP: no such app directory"),
        (["examples/quickstart-legacy", "--run-config", "rounds=2"], "--run-config: unknown key 'rounds'"),
        (["examples/quickstart-legacy", "--run-config", "lr=fast"], "--run-config: lr expects float"),
        (["examples/quickstart-legacy", "--engine", "spark"], "--engine: must be one of ray, inline"),
        (["nosuch.module:app", "other:app"], "serverapp: cannot import 'nosuch.module'"),
        (["quickstart_legacy.server_app", "x:y"], "serverapp: expected module:attribute"),
        (["examples/quickstart-legacy", "--set", "tap.enabled=false"], "--set: tap.enabled: not an audit's tap setting"),
        (["examples/quickstart-legacy", "--set", "tap.keep_clients=2"], "tap.keep_clients"),
        (["examples/quickstart-legacy", "--set", "tap.keep_directions=['sideways']"], "tap.keep_directions"),
        (["examples/quickstart-legacy", "--set", "attack.iterations=5"], "--set: attack.<key> and threat.<key> are for --role"),
    ],
)
def test_audit_errors_are_one_line_and_write_nothing(args: list[str], expected: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(EXAMPLES.parent)
    code = main(["audit", *args, "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and expected in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_app_directory_without_components_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.flwr.app.components]\nserverapp = 'a:b'\n")
    with pytest.raises(AuditError, match="lacks .* clientapp"):
        load_app_spec(str(tmp_path))


def test_run_config_syntax() -> None:
    assert parse_run_config("num-server-rounds=3 lr=0.1 name='x y' flag=true") == {
        "num-server-rounds": 3, "lr": 0.1, "name": "x y", "flag": True,
    }
    assert merge_run_config({"lr": 0.5}, {"lr": 1}) == {"lr": 1.0}


SMALL = "num-server-rounds=1 batch-size=4 max-steps=1"
MSG_MODEL = ["--model", "quickstart_message_api.task:Net", "--input-shape", "1,28,28"]
GRANTS = ["--set", "threat.num_images=4", "--set", "threat.local_batch_size=4", "--set", "attack.labels=yin"]


def _audit(tmp_path: Path, app: str, *extra: str) -> Path:
    out = tmp_path / "runs"
    assert main(["audit", str(EXAMPLES / app), "--engine", "inline", "--run-config", SMALL, "--out", str(out), *extra]) == 0
    return next(out.iterdir())


def test_attack_on_audited_app_maps_tensors_and_scores_against_granted_client_data(tmp_path: Path) -> None:
    run_dir = _audit(tmp_path, "quickstart-message-api", *MSG_MODEL)
    msg = TrafficLog.open(run_dir).messages(direction="up", message_type="train")[0].id
    code = main(["attack", str(run_dir), "--msg", str(msg), "--set", "attack.iterations=60", *GRANTS,
                 "--client-data", "quickstart_message_api.task:partition_images", "--trust-run"])
    assert code == 0
    out = next((run_dir / "attacks").iterdir())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["hyperparameters"]["lr"] == "traffic" and metrics["hyperparameters"]["local_steps"] == "assumed 1"
    assert len(metrics["nearest_lpips"]) == 4 and 0 <= metrics["nearest_lpips_best"] <= metrics["nearest_lpips_avg"]
    curve = [float(line.split(",")[1]) for line in (out / "loss.csv").read_text().splitlines()[1:]]
    assert curve[-1] < 0.8 * curve[0]
    # scored against the first 4 images of the granted data (the client's batch when it gives them in
    # training order), with a calibrated verdict; the grid shows each reconstruction's nearest image
    assert metrics["scored_against"].startswith("the first 4 images") and len(metrics["lpips"]) == 4
    assert metrics["verdict"] in ("not recovered", "partial", "recognised") and len(metrics["verdicts"]) == 4
    assert len(metrics["nearest_images"]) == 4


def test_a_run_directory_naming_planted_code_gets_none_of_it_imported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = _audit(tmp_path, "quickstart-message-api", *MSG_MODEL)
    planted, marker = tmp_path / "planted", tmp_path / "ran.txt"
    planted.mkdir()
    (planted / "planted_mod.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nNet = None\n")
    card = json.loads((run_dir / "deployment.json").read_text())
    card["model"].update(factory="planted_mod:Net", factory_root=str(planted))
    (run_dir / "deployment.json").write_text(json.dumps(card))
    msg = TrafficLog.open(run_dir).messages(direction="up", message_type="train")[0].id
    capsys.readouterr()
    for argv in (["attack", str(run_dir), "--msg", str(msg), *GRANTS], ["attack", str(run_dir), "--resume"]):
        code = main(argv)
        err = capsys.readouterr().err.strip()
        if argv[-1] == "--resume":  # no job book: the audit had no role
            assert code == 2 and "no adversary job book" in err
            continue
        assert code == 2 and len(err.splitlines()) == 1, err
        assert "'planted_mod:Net'" in err and "--trust-run" in err and "--app-root" in err, err
    # naming a model on the command line does not make the run's root searched either
    code = main(["attack", str(run_dir), "--msg", str(msg), *GRANTS, "--model", "planted_mod:Net", "--input-shape", "1,28,28"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "cannot load 'planted_mod:Net'" in err, err
    assert not marker.exists()


def test_legacy_parameters_map_onto_the_model_by_order(tmp_path: Path) -> None:
    from adversary.job import AuditStatement
    from adversary.observation import build_observation
    from adversary.roles import AttackTarget
    from fl_sim.deployment import load_card

    run_dir = _audit(tmp_path, "quickstart-legacy")
    log = TrafficLog.open(run_dir)
    msg = log.messages(direction="up", message_type="train")[0]
    assert all(t.name.split("/")[-1].isdigit() for t in msg.tensors)
    card = AuditStatement(factory="quickstart_legacy.task:Net", input_shape=(1, 28, 28)).card(load_card(run_dir))
    obs = build_observation(log, card, AttackTarget("update", None, (msg.id,)))
    assert list(obs.update) == list(obs.model.state_dict()) and obs.num_classes == 10


def test_mismatched_model_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = _audit(tmp_path, "quickstart-legacy")
    capsys.readouterr()
    code = main(["attack", str(run_dir), "--round", "1", "--all", *MSG_MODEL, *GRANTS])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: --model:") and len(err.splitlines()) == 1


def test_audit_with_a_role_attacks_while_the_app_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from adversary.jobs import JobBook

    run_dir = _audit(tmp_path, "quickstart-message-api", *MSG_MODEL, "--role", "curious-server",
                     "--set", "attack.iterations=5", *GRANTS)
    jobs = JobBook(run_dir).jobs()
    assert len(jobs) == 2 and {j.state for j in jobs} == {"done"}
    assert "adversary: the role runs in its own process" in capsys.readouterr().out  # and whether it is confined


def test_an_audit_keeps_what_its_tap_policy_says_and_its_role_still_sees_everything(tmp_path: Path) -> None:
    """``--set tap.keep_directions=['up']``: the models the app's server sends keep only their index rows
    (sizes, digests, norms), the replies keep their tensors, and the role's attacks (which need the model
    each reply answers: kept after all, because a job names it) all finish."""
    from adversary.jobs import JobBook

    run_dir = _audit(tmp_path, "quickstart-message-api", *MSG_MODEL, "--role", "curious-server", "--set",
                     "attack.iterations=5", *GRANTS, "--set", "tap.keep_directions=['up']", "--set", "tap.spool_rounds=0")
    jobs = JobBook(run_dir).jobs()
    assert len(jobs) == 2 and {j.state for j in jobs} == {"done"}, [j.error for j in jobs]
    with TrafficLog.open(run_dir) as log:
        downs, ups = log.messages(direction="down"), log.messages(direction="up")
        answered = {u.reply_to for u in ups if u.id in {m for j in jobs for m in j.target.messages}}
        dropped = [m for m in downs if m.flower_id not in answered]
        assert dropped and all(m.tensors and not m.kept for m in dropped)
        assert all(m.kept for m in ups)
    resolved = json.loads((run_dir / "config.json").read_text())
    assert resolved["tap_policy"]["keep_directions"] == ["up"]
