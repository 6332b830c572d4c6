"""Config validation: one clear line naming the key, exit code 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import main
from fl_sim.config import ConfigError, load_config
from fl_sim.rundir import CONFIG_JSON, META_JSON, create_run_dir, load_run_config


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("federation.protocl=fedsgd", "federation.protocl: unknown key"),
        ("federation.protocol=fedprox", "federation.protocol: must be one of 'fedsgd' or 'fedavg'"),
        ("federation.rounds=0", "federation.rounds:"),
        ("federation.rounds=abc", "federation.rounds:"),
        ("federation.lr=-1", "federation.lr:"),
        ("engine.name=spark", "engine.name: must be one of 'ray' or 'inline'"),
        ("data.test_fraction=1.5", "data.test_fraction:"),
        ("federation.clients_per_round=9", "federation.clients_per_round: must be <= federation.num_clients"),
        ("bogus=1", "bogus: unknown key"),
    ],
)
def test_bad_values_give_one_line_naming_the_key(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    message = str(err.value)
    assert expected in message
    assert "\n" not in message


def test_overrides_parse_toml_values(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('seed = 3\n[federation]\nrounds = 7\n')
    cfg = load_config(path, ["federation.lr=0.5", "federation.fedbn=false", "data.name=cifar10-sample"])
    assert (cfg.seed, cfg.federation.rounds, cfg.federation.lr, cfg.federation.fedbn) == (3, 7, 0.5, False)
    assert cfg.data.name == "cifar10-sample"


def test_resolved_config_round_trips_through_run_dir(tmp_path: Path) -> None:
    cfg = load_config(None, [f"out_dir={tmp_path}", "seed=11", "model.options.width=4"])
    run_dir = create_run_dir(cfg, command=["test"])
    assert load_run_config(run_dir) == cfg
    assert load_config(run_dir / "config.toml") == cfg
    meta = (run_dir / META_JSON).read_text()
    assert '"seed": 11' in meta and '"torch"' in meta and '"flwr"' in meta and "git_revision" in meta
    assert (run_dir / CONFIG_JSON).is_file()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "federation.rounds=-2"], "federation.rounds:"),
        (["--set", "data.name=imagenet-full"], "data.name: unknown dataset 'imagenet-full'; choose one of:"),
        (["--set", "model.name=vit"], "model.name: unknown model 'vit'"),
        (["--set", "data.name=cifar10", "--set", "data.root=/nonexistent"], "data.root:"),
        (["--config", "/no/such.toml"], "--config: file not found"),
        (["--set", "noequals"], "--set: expected key=value"),
        (["--set", ".=3"], "--set: '.' is not a key"),
        (["--set", "federation.lr=nan"], "federation.lr: input should be a finite number"),
        (["--set", "name=../escaped"], "name: must be a plain name"),
        (["--set", "name=a\x00b"], "name: must be a plain name"),
        (["--config", "BINARY"], "is not a text file (not UTF-8)"),
        (["--set", "out_dir=AFILE/below"], "is a file, not a folder"),
    ],
)
def test_cli_errors_exit_2_and_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: str) -> None:
    out = tmp_path / "runs"
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe\x00\x01 not text")
    (tmp_path / "afile").write_text("x")
    args = [a.replace("BINARY", str(tmp_path / "binary.toml")).replace("AFILE", str(tmp_path / "afile")) for a in args]
    code = main(["run", "--set", f"out_dir={out}", "--set", "engine.name=inline", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert expected in err
    assert len(err.splitlines()) == 1
    assert not out.exists()


def test_traffic_cli_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["traffic", "list", str(tmp_path)]) == 2
    assert "no traffic log" in capsys.readouterr().err
