"""A malicious server inside the Flower loop: trap weights sent, images recovered exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adversary.jobs import JobBook
from adversary.traffic_log import TrafficLog
from fl_sim.config import ConfigError
from fl_sim.simulation import run_simulation
from fl_sim.task import load_task

TRAP = ("data.name=cifar10-sample", "model.name=mlp", "model.options={hidden=1000}", "federation.num_clients=1",
        "federation.protocol=fedsgd", "federation.batch_size=16", "adversary.role=malicious-server")


def test_trap_weights_through_the_loop_recover_private_images_exactly(tiny) -> None:
    out = run_simulation(tiny(*TRAP, "federation.rounds=1"))
    jobs = JobBook(out.run_dir).jobs()
    assert len(jobs) == 1 and jobs[0].state == "done" and jobs[0].target.kind == "malicious"
    metrics = json.loads((Path(jobs[0].out_dir) / "metrics.json").read_text())
    assert metrics["num_images"] == 16
    assert metrics["exact_recovered"] >= 8, metrics["psnr"]  # PSNR >= 40 dB; 13 of 16 when calibrated


def test_only_the_chosen_rounds_are_manipulated(tiny) -> None:
    cfg = tiny(*TRAP, "federation.rounds=2", "adversary.options={rounds=[2]}")
    out = run_simulation(cfg)
    log = TrafficLog.open(out.run_dir)
    first = log.tensors(log.messages(round=1, direction="down")[0].id, "arrays")
    initial = load_task(cfg).new_model().state_dict()
    assert all(torch.equal(first[k], initial[k]) for k in first)  # round 1: the honest model
    second = log.tensors(log.messages(round=2, direction="down")[0].id, "arrays")
    weight = next(k for k in second if k.endswith("weight"))
    assert (second[weight] < 0).float().mean() == pytest.approx(0.5, abs=0.01)  # trap rows: half negative
    assert [j.target.round for j in JobBook(out.run_dir).jobs()] == [2]


def test_trap_weights_need_a_first_linear_layer(tiny) -> None:
    with pytest.raises(ConfigError, match="adversary.options.strategy: .*nn.Linear"):
        run_simulation(tiny("federation.protocol=fedsgd", "adversary.role=malicious-server"))
    with pytest.raises(ConfigError, match="adversary.options.strategy: unknown 'phish'"):
        run_simulation(tiny(*TRAP, "adversary.options={strategy=\"phish\"}"))
