"""Figure experiments (Figures 1, 2b, 4, 5): smoke presets with tiny overrides, paper presets resolve."""

from __future__ import annotations

import pytest
import torch

from experiments.runner import resolve_settings, run_experiment

torch.set_num_threads(min(2, torch.get_num_threads()))

TINY = ["attack.iterations=20", "stat_images=6"]


def _lpips_ok(value) -> bool:
    return value is not None and 0.0 <= value <= 1.5


def _png(outcome, name: str) -> None:
    path = outcome.out_dir / "figures" / name
    assert path.is_file() and path.stat().st_size > 1000, path


def test_fig1_bn_smoke(tmp_path) -> None:
    outcome = run_experiment("fig1_bn", "smoke", [*TINY, "images=2"], tmp_path)
    assert outcome.ran == 3
    table = outcome.tables[0]
    assert [row[0] for row in table.rows] == ["BN_exact", "BN_infer", "BN_proxy"]
    for row in table.rows:
        assert all(_lpips_ok(v) for v in row[1:4]) and _lpips_ok(row[5])
        assert row[5] <= row[1] + 1e-9  # the oracle restart is never worse than the attack's own pick
    assert any("oracle" in note for note in table.notes)
    assert (outcome.out_dir / "tables" / "table_bn_lowres.csv").is_file()
    _png(outcome, "fig1_lowres.png")


def test_labels_known_smoke(tmp_path) -> None:
    outcome = run_experiment("labels_known", "smoke", [*TINY, "images=2"], tmp_path)
    rows = {row[0]: row for row in outcome.tables[0].rows}
    assert set(rows) == {"labels known", "labels unknown (joint optimisation)"}
    assert rows["labels known"][-1] == 1.0
    for row in rows.values():
        assert all(_lpips_ok(v) for v in row[1:4]) and 0.0 <= row[-1] <= 1.0
    _png(outcome, "fig2b_labels.png")


def test_sweeps_smoke(tmp_path) -> None:
    outcome = run_experiment("sweeps", "smoke", [*TINY, "tv_sweep.values=[0.0, 0.1]", "bn_sweep.values=[0.0, 0.01]",
                                                  "bn_sweep.images=2"], tmp_path)
    assert outcome.ran == 4
    tv, bn = outcome.tables
    assert [r[0] for r in tv.rows] == [0.0, 0.1] and [r[0] for r in bn.rows] == [0.0, 0.01]
    for row in tv.rows + bn.rows:
        assert all(_lpips_ok(v) for v in row[1:4])
    for name in ("tv_sweep.png", "bn_sweep.png", "tv_sweep_grid.png", "bn_sweep_grid.png"):
        _png(outcome, name)


def test_paper_presets_resolve() -> None:
    fig1 = resolve_settings("fig1_bn", "paper", ["data.root=/data/cifar"])
    assert fig1["model"]["name"] == "resnet18" and fig1["images"] == 16 and fig1["attack"]["iterations"] == 10000
    assert fig1["highres"]["enabled"] and fig1["highres"]["iterations"] == 24000 and fig1["highres"]["data"]["image_size"] == 224
    from experiments.registry import get_experiment

    names = [c.name for c in get_experiment("fig1_bn").cells(fig1)]
    assert names == [f"{g}/{bn}" for g in ("lowres", "highres") for bn in ("exact", "infer", "proxy")]
    smoke_names = [c.name for c in get_experiment("fig1_bn").cells(resolve_settings("fig1_bn", "smoke", []))]
    assert not any(n.startswith("highres") for n in smoke_names)
    labels = resolve_settings("labels_known", "paper", ["data.root=/data/cifar"])
    assert labels["label_settings"] == ["known", "joint"] and labels["images"] == 16
    sweeps = resolve_settings("sweeps", "paper", ["data.root=/data/cifar"])
    assert sweeps["tv_sweep"]["values"] == [0.0, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5]
    assert sweeps["bn_sweep"]["values"] == [0.0, 0.0005, 0.001, 0.01, 0.05] and sweeps["bn_sweep"]["images"] == 16
    assert len(get_experiment("sweeps").cells(sweeps)) == 12
