"""Experiment requests that cannot work fail in one line, exit 2, before any cell runs and with nothing
left on disk; a damaged experiment folder is named, not a traceback."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from app.cli import main
from experiments.runner import run_experiment


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["experiment", "run", *args])
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize(("name", "assignment", "expected"), [
    ("tradeoff", "attack.batch_sizes=[0]", "attack.batch_sizes[0]: must be a positive integer"),
    ("tradeoff", "attack.batch_sizes=[]", "attack.batch_sizes: must not be empty"),
    ("tradeoff", "attack.batch_sizes=[1.5]", "attack.batch_sizes[0]: expected an integer"),
    ("tradeoff", "attack.iterations=-1", "attack.iterations: must be a positive integer"),
    ("tradeoff", "utility.rounds=abc", "utility.rounds: expected an integer as in the preset, got 'abc'"),
    ("tradeoff", "utility.lr=nan", "utility.lr: must be a finite number"),
    ("tradeoff", "utility.lr=0", "utility.lr: must be above 0"),
    ("tradeoff", "data.name=nosuch", "data.name: unknown name 'nosuch'; choose one of: cifar10"),
    ("tradeoff", "attack.preset=nosuch", "attack.preset: unknown name 'nosuch'"),
    ("tradeoff", "defenses=3", "defenses: expected a list"),
    ("label_histogram", "batches=abc", "batches: expected an integer"),
    ("label_histogram", "seed=-1", "seed: must not be negative"),
    ("fig1_bn", "model.options.width=0", "model.options.width: must be a positive integer"),
    ("fig1_bn", "highres.enabled=3", "highres.enabled: expected true or false"),
    ("malicious_server", 'models={imprint={name="nosuch"}}', "models.imprint.name: unknown name 'nosuch'"),
])
def test_a_bad_setting_stops_before_anything_runs(name: str, assignment: str, expected: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(capsys, name, "--set", assignment, "--out", str(tmp_path / "out"))
    assert code == 2 and err == f"error: --set: {expected}" + err.split(expected, 1)[1] and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_the_experiment_models_are_accepted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """bn-convnet is built by the experiments themselves: a valid name, so the request gets past the check
    (and stops at the next one, an --only that matches nothing)."""
    code, err = _run(capsys, "fig1_bn", "--set", "model.name=bn-convnet", "--only", "nosuch/*", "--out", str(tmp_path))
    assert code == 2 and err.startswith("error: --only:")


def test_an_out_that_is_a_file_or_unwritable(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for out in (afile, afile / "below"):
        code, err = _run(capsys, "tradeoff", "--out", str(out))
        assert code == 2 and err == f"error: --out: {afile} is a file, not a folder"
    assert afile.read_text() == "mine"

    def read_only(*_args: object, **_kwargs: object) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)  # root writes through chmod: a read-only mount says no
    code, err = _run(capsys, "tradeoff", "--out", str(tmp_path / "new"))
    assert code == 2 and err == f"error: --out: {tmp_path} is not writable (Read-only file system)"
    assert not (tmp_path / "new").exists()


def test_a_run_config_out_dir_that_cannot_be_written(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def read_only(*_args: object, **_kwargs: object) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    assert main(["run", "--set", f"out_dir={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "out_dir:" in err and "is not writable (Read-only file system)" in err and len(err.splitlines()) == 1


def test_a_failed_first_cell_leaves_no_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """CIFAR-10 is not offline: the cell stops at data.root, and the folder it had made goes with it."""
    code, err = _run(capsys, "label_histogram", "--preset", "paper", "--out", str(tmp_path / "out"))
    assert code == 2 and err.startswith("error: data.root:")
    assert not (tmp_path / "out").exists()


def test_a_failure_after_a_finished_cell_keeps_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Work that finished is never removed: a later cell failing leaves the cached cells for a resume."""
    from experiments import label_histogram

    calls = []
    real = label_histogram.LabelHistogramExperiment.run_cell

    def second_fails(self, cell, workdir, ctx):  # noqa: ANN001, ANN202
        calls.append(cell.name)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(self, cell, workdir, ctx)

    monkeypatch.setattr(label_histogram.LabelHistogramExperiment, "run_cell", second_fails)
    with pytest.raises(RuntimeError, match="killed"):
        run_experiment("label_histogram", "smoke", ["batch_sizes=[16, 32]", "batches=5"], tmp_path)
    cells = list((tmp_path / "experiments").glob("*/cells/*.json"))
    assert len(cells) == 1


def test_a_damaged_experiment_folder_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outcome = run_experiment("label_histogram", "smoke", ["batch_sizes=[16]", "batches=5"], tmp_path)
    settings = outcome.out_dir / "settings.json"
    cell = next((outcome.out_dir / "cells").glob("*.json"))
    good_settings, good_cell = settings.read_bytes(), cell.read_bytes()
    for path, damage, expected in [
        (settings, b"\xff\xfe binary", "cannot be read"),
        (settings, b"[1, 2]", "not a JSON object"),
        (settings, json.dumps({"experiment": "nosuch", "settings": {}}).encode(), "unknown experiment 'nosuch'"),
        (settings, json.dumps({"experiment": "label_histogram", "settings": {}}).encode(), "do not fit 'label_histogram'"),
        (cell, b"{truncated", "cannot be read"),
        (cell, json.dumps({"cell": 3}).encode(), "holds no cell and result"),
    ]:
        path.write_bytes(damage)
        assert main(["experiment", "report", str(outcome.out_dir)]) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, err
        settings.write_bytes(good_settings)
        cell.write_bytes(good_cell)
    assert main(["experiment", "report", str(outcome.out_dir)]) == 0
    capsys.readouterr()
    cell.write_bytes(b"{truncated")  # a run over a damaged cell computes it again
    again = run_experiment("label_histogram", "smoke", ["batch_sizes=[16]", "batches=5"], tmp_path)
    assert again.ran == 1 and json.loads(cell.read_text())["cell"] == "b16"


def test_traffic_export_to_a_path_below_a_file_or_to_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from adversary.traffic_log import TrafficLog
    from app.simulation import run_simulation
    from tests.conftest import tiny_config

    run_dir = run_simulation(tiny_config(tmp_path / "runs", "federation.rounds=1")).run_dir
    msg = TrafficLog.open(run_dir).messages()[0].id
    afile = tmp_path / "afile"
    afile.write_text("mine")
    capsys.readouterr()
    for out, expected in ((afile / "x.safetensors", f"--out: {afile} is a file, not a folder"),
                          (tmp_path, f"--out: {tmp_path} is a folder; name the file to write")):
        assert main(["traffic", "export", str(run_dir), str(msg), "--out", str(out)]) == 2
        assert capsys.readouterr().err.strip() == f"error: {expected}"
    assert afile.read_text() == "mine"
    assert main(["traffic", "export", str(run_dir), str(msg), "--out", str(tmp_path / "new" / "x.safetensors")]) == 0
    assert (tmp_path / "new" / "x.safetensors").stat().st_size > 0


def test_audit_out_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "afile"
    afile.write_text("mine")
    assert main(["audit", str(tmp_path), "--out", str(afile)]) == 2  # checked before the app is even looked at
    assert capsys.readouterr().err.strip() == f"error: --out: {afile} is a file, not a folder"
