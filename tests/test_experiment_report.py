"""The label-histogram (Figure 2a) and cost-model (Table 3) experiments, and report.html."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from experiments.cost_model import PAPER_DEVICE, PAPER_TABLE3, cost_hours
from experiments.label_histogram import distinct_label_stats
from experiments.runner import report_experiment, run_experiment
from tests.browser import chromium, needs_chromium

PAPER_CSV = Path(__file__).resolve().parents[1].parent / "shared" / "paper" / "cost_model_gpu_hours.csv"
HIST_SETTINGS = ["batch_sizes=[2,4,8,16]", "batches=300"]
COST_SETTINGS = ["timing.batch_size=2", "timing.iterations=2", 'model={name="convnet",options={width=8}}']


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("report")
    hist = run_experiment("label_histogram", "smoke", HIST_SETTINGS, out)
    cost = run_experiment("cost_model", "smoke", COST_SETTINGS, out)
    return hist, cost


def _paper_csv() -> dict[int, tuple[float, float, float]]:
    if not PAPER_CSV.is_file():
        return dict(PAPER_TABLE3)
    with PAPER_CSV.open() as fh:
        return {int(r["N"]): (float(r["none"]), float(r["gradprune"]), float(r["instahide"])) for r in csv.DictReader(fh)}


# ----------------------------------------------------------------------------- cost model


def test_cost_formula_reproduces_paper_table3() -> None:
    paper = _paper_csv()
    assert paper == PAPER_TABLE3
    for N, expected in paper.items():
        got = cost_hours(N, 0.25)
        for value, ref in zip((got["No defense"], got["GradPrune"], got["InstaHide"]), expected):
            assert abs(value - ref) <= 0.01, (N, value, ref)


def test_cost_model_tables(runs) -> None:
    _hist, cost = runs
    assert cost.ran == 1
    table = next(t for t in cost.tables if t.name == "table3_cost")
    assert table.columns == ["Device", "t (h per batch)", "N", "No defense", "GradPrune", "InstaHide"]
    paper = _paper_csv()
    ref = [r for r in table.rows if r[0] == PAPER_DEVICE]
    assert [r[2] for r in ref] == [5_000, 50_000, 500_000]
    for row in ref:
        assert all(abs(v - e) <= 0.01 for v, e in zip(row[3:], paper[row[2]]))
    assert any("matches the paper" in n for n in table.notes)
    measured = [r for r in table.rows if r[0] != PAPER_DEVICE]
    assert len(measured) == 3 and measured[0][0].startswith("CPU:")
    t = measured[0][1]
    assert t > 0 and all(r[3] == r[4] and abs(r[3] - t) <= 0.01 for r in measured)
    instahide = [r[5] for r in measured]
    assert instahide == sorted(instahide) and instahide[0] > 10  # grows with N; at least the 10 h training
    timing = next(t for t in cost.tables if t.name == "attack_timing")
    assert timing.rows[0][1] == "convnet" and timing.rows[0][2] == 2 and timing.rows[0][5] > 0
    assert (cost.out_dir / "figures" / "cost_model.png").stat().st_size > 5000


def test_timing_with_batchnorm_uses_the_full_eq3_attack() -> None:
    """The paper preset's path: ResNet-18 has BatchNorm, so the BN prior (exact stats) is timed too."""
    from experiments.cost_model import device_name, measure_attack_iteration

    r = measure_attack_iteration({"seed": 0, "model": {"name": "resnet18", "options": {}}, "image_shape": [3, 32, 32],
                                  "num_classes": 10, "batch_size": 2, "iterations": 1, "warmup": 1, "device": device_name()})
    assert r["attack"] == "huang-eq3" and r["per_iteration_s"] > 0 and r["timed_iterations"] == 1


# ----------------------------------------------------------------------------- label histogram


def test_distinct_label_stats_bounds() -> None:
    import numpy as np

    labels = np.repeat(np.arange(3), 4)  # 3 classes, 12 images
    r = distinct_label_stats(labels, 3, 5, 50, seed=1)
    assert 1 <= r["min"] <= r["max"] <= 3 and r["frac_unique"] == 0.0 and sum(r["histogram"]) == 50
    assert distinct_label_stats(labels, 3, 5, 50, seed=1) == r  # seeded
    with pytest.raises(ValueError, match="exceeds"):
        distinct_label_stats(labels, 3, 13, 5, seed=0)


def test_label_histogram_is_sane(runs) -> None:
    hist, _cost = runs
    assert hist.ran == 4
    (table,) = hist.tables
    rows = {r[0]: r for r in table.rows}
    assert list(rows) == [2, 4, 8, 16]
    fracs = []
    for b, (_b, mean, lo, hi, frac, classes) in rows.items():
        assert classes == 10
        assert 1 <= lo <= mean <= hi <= min(b, classes)
        assert 0.0 <= frac <= 1.0
        fracs.append(frac)
    assert fracs[0] > fracs[1] > fracs[2] > 0.0  # 2, 4, 8: unique labels ever rarer
    assert fracs[3] <= fracs[2]
    means = [rows[b][1] for b in rows]
    assert means == sorted(means)
    assert (hist.out_dir / "figures" / "label_histogram.png").stat().st_size > 5000


# ----------------------------------------------------------------------------- report.html


def _check_html(path: Path, tables) -> str:
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert "<script" not in text.lower()
    assert not re.search(r'(src|href)="(?!data:)', text), "external resource referenced"
    assert text.count('<img alt="') >= 1 and 'src="data:image/png;base64,' in text
    for table in tables:
        assert f"<h2>{table.title}</h2>" in text or table.title.replace("'", "&#x27;") in text
    assert 'id="settings"' in text
    return text


def test_report_html_written_and_regenerated(runs) -> None:
    hist, cost = runs
    for outcome in (hist, cost):
        path = outcome.out_dir / "report.html"
        _check_html(path, outcome.tables)
        assert (outcome.out_dir / "report.md").is_file()
    text = (cost.out_dir / "report.html").read_text()
    assert "<td>934.48</td>" in text and "<td>4,215,524.32</td>" in text
    (cost.out_dir / "report.html").unlink()
    report_experiment(cost.out_dir)
    assert "<td>46,579.01</td>" in (cost.out_dir / "report.html").read_text()


@needs_chromium
def test_report_html_renders_in_headless_chromium(runs, tmp_path: Path) -> None:
    _hist, cost = runs
    url = (cost.out_dir / "report.html").resolve().as_uri()
    done = chromium("--dump-dom", url, profile=tmp_path / "profile-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert "<table>" in dom and "<td>934.48</td>" in dom and "<td>4,215,524.32</td>" in dom
    assert re.search(r'<img[^>]+src="data:image/png;base64,', dom)
    shot = tmp_path / "report.png"
    done = chromium(f"--screenshot={shot}", "--window-size=1200,1600", "--hide-scrollbars", url, profile=tmp_path / "profile-shot")
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 10_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
