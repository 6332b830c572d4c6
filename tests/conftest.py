"""Shared fixtures: tiny, seeded run configs on the embedded MNIST digits."""

from __future__ import annotations

from pathlib import Path

import pytest

import app  # noqa: F401  (the app layer's start-up: its network guard, before anything imports Flower or Ray)
from fl_sim.config import RunConfig, load_config

TINY = [
    "data.name=mnist-5k",
    "data.max_test=200",
    "model.name=convnet",
    "model.options.width=8",
    "federation.num_clients=3",
    "federation.rounds=2",
    "federation.batch_size=8",
    "federation.local_steps=2",
    "federation.lr=0.05",
    "engine.name=inline",
]


def tiny_config(out_dir: Path, *overrides: str) -> RunConfig:
    return load_config(None, [*TINY, f"out_dir={out_dir}", *overrides])


@pytest.fixture
def tiny(tmp_path: Path):
    return lambda *overrides: tiny_config(tmp_path, *overrides)
