"""Defense overhead measured side by side: a defense made k times slower comes out near k, a free one near 1."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import pytest
from pydantic import Field

from clients.defenses.registry import DEFENSES, register_defense
from clients.overhead import measure_overhead
from clients.training import gradient_step
from fl_sim.config import DEFENSE_PARAMS, DefenseParams
from tests.conftest import tiny_config


class RepeatParams(DefenseParams):
    name: Literal["test-repeat"] = "test-repeat"
    k: int = Field(1, ge=1)


class RepeatStep:
    """The plain gradient step, computed k times (the last one is used): k times the work, same result."""

    def __init__(self, params: RepeatParams, ctx: object) -> None:
        self.k = params.k

    def gradient(self, model, x, y, params, rng):
        for _ in range(self.k):
            out = gradient_step(model, x, y, params)
        return out


@pytest.fixture
def repeat_defense() -> Iterator[None]:
    register_defense("test-repeat", kind="step", params=RepeatParams)(RepeatStep)
    try:
        yield
    finally:  # leave the registries as the other tests know them
        DEFENSES.pop("test-repeat", None)
        DEFENSE_PARAMS.pop("test-repeat", None)


def _config(tmp_path, defenses: str):
    return tiny_config(tmp_path, "model.options.width=32", "federation.batch_size=32", "federation.local_steps=8",
                       f"defenses={defenses}")


def test_a_defense_repeating_its_work_k_times_costs_about_k(repeat_defense: None, tmp_path) -> None:
    slow = measure_overhead(_config(tmp_path, '[{name="test-repeat", k=3}]'), pairs=5, warmup=1)
    assert 2.2 < slow.ratio < 3.6, slow
    assert slow.defended_s > slow.plain_s and slow.examples_defended == slow.examples_plain == 8 * 32
    free = measure_overhead(_config(tmp_path, '[{name="test-repeat", k=1}]'), pairs=5, warmup=1)
    assert 0.8 < free.ratio < 1.25, free


def test_measuring_needs_a_defense(tmp_path) -> None:
    with pytest.raises(ValueError, match="defenses: nothing to measure"):
        measure_overhead(_config(tmp_path, "[]"))
