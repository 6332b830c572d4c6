"""A malicious server inside the Flower loop: trap weights sent, images recovered exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adversary.jobs import JobBook
from adversary.traffic_log import TrafficLog
from app.simulation import run_simulation
from fl_sim.config import ConfigError
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
    with pytest.raises(ConfigError, match="adversary.options.colour: not an option of strategy 'fishing'; accepted: .*target"):
        run_simulation(tiny("adversary.role=malicious-server", 'adversary.options={strategy="fishing", colour=1}'))


# --- fishing ----------------------------------------------------------------------------------

FISH = ("federation.num_clients=1", "federation.protocol=fedsgd", "federation.batch_size=8", "federation.rounds=1",
        "adversary.attack.iterations=200", "adversary.preset=inverting-gradients", "model.options.width=32")


def _single_class(cfg) -> tuple[int, int]:
    """(class, position) of a class that appears exactly once in the round-1 batch of partition 0."""
    from clients.training import sample_batches

    task = load_task(cfg)
    (idx,) = sample_batches(task.partitions[0], steps=1, batch_size=8, seed=cfg.seed, round=1, partition=0)
    labels = task.dataset.train_y[idx].tolist()
    c = next(c for c in labels if labels.count(c) == 1)
    return c, labels.index(c)


def _job_metrics(run_dir: Path) -> list[dict]:
    jobs = JobBook(run_dir).jobs()
    assert jobs and all(j.state == "done" for j in jobs), [j.error for j in jobs]
    return [json.loads((Path(j.out_dir) / "metrics.json").read_text()) for j in jobs]


def test_fishing_isolates_one_image_of_a_batch_and_beats_the_plain_attack(tiny) -> None:
    target, position = _single_class(tiny(*FISH))
    fished = _job_metrics(run_simulation(tiny(*FISH, "adversary.role=malicious-server",
                                              f'adversary.options={{strategy="fishing", target={target}}}')).run_dir)[0]
    assert fished["target_class"] == target and fished["target_images"] == 1  # counted from the fished bias gradient
    assert fished["batch_images"] == 8 and fished["num_images"] == 1
    # The strongest plain attacker (labels known) on the same batch, scored on the same image.
    plain = _job_metrics(run_simulation(tiny(*FISH, "adversary.role=curious-server", "adversary.threat.num_images=8",
                                             "adversary.threat.labels=known")).run_dir)[0]
    plain_lpips, plain_psnr = plain["lpips"][position], plain["psnr"][position]
    assert fished["psnr_avg"] > plain_psnr + 10, (fished["psnr_avg"], plain_psnr)
    assert fished["lpips_avg"] < plain_lpips, (fished["lpips_avg"], plain_lpips)


def test_fishing_a_class_absent_from_the_batch_recovers_nothing(tiny) -> None:
    from clients.training import sample_batches

    cfg = tiny(*FISH)
    task = load_task(cfg)
    (idx,) = sample_batches(task.partitions[0], steps=1, batch_size=8, seed=cfg.seed, round=1, partition=0)
    absent = next(c for c in range(10) if c not in task.dataset.train_y[idx].tolist())
    (m,) = _job_metrics(run_simulation(tiny(*FISH, "adversary.role=malicious-server",
                                            f'adversary.options={{strategy="fishing", target={absent}}}')).run_dir)
    assert m["target_images"] == 0 and m["num_images"] == 0 and "no image of the fished class" in m["note"]


# --- imprint ----------------------------------------------------------------------------------

IMPRINT = ("federation.protocol=fedsgd", "federation.rounds=1", "adversary.role=malicious-server",
           'adversary.options={strategy="imprint"}')


def test_imprint_needs_architecture_control(tiny) -> None:
    with pytest.raises(ConfigError, match="imprint needs architecture control.*federation.model_from_server = true"):
        run_simulation(tiny(*IMPRINT, "federation.num_clients=1"))


def test_imprint_recovers_most_of_a_batch_of_32_exactly(tiny) -> None:
    out = run_simulation(tiny(*IMPRINT, "federation.num_clients=1", "federation.batch_size=32",
                              "federation.model_from_server=true"))
    (m,) = _job_metrics(out.run_dir)
    assert m["num_images"] == 32 and m["exact_recovered"] >= 20, m["psnr"]  # measured: 26 of 32
    log = TrafficLog.open(out.run_dir)
    down = log.messages(round=1, direction="down", message_type="train")[0]
    assert "config/architecture" in down.config and "arrays/input_block.enc.weight" in log.tensors(down.id)
    sent = load_file(str(out.run_dir / "adversary" / "manipulations" / "r1.safetensors"))
    assert sent["input_block.enc.bias"].shape == (128,)  # 4 bins per image the server expects


def test_imprint_recovers_images_from_a_secure_aggregation_sum(tiny) -> None:
    out = run_simulation(tiny(*IMPRINT, "federation.num_clients=3", "federation.batch_size=10",
                              "federation.model_from_server=true", "federation.secagg=true", "secagg.clipping_range=1.0"))
    (m,) = _job_metrics(out.run_dir)
    assert m["kind"] == "aggregate" and m["clients"] == 3 and m["num_images"] == 30
    assert m["exact_recovered"] >= 15, m["psnr"]  # measured: 22 of 30 through SecAgg+'s quantization
    log = TrafficLog.open(out.run_dir)
    assert not any("arrays/input_block.enc.weight" in log.tensors(u.id) for u in log.messages(direction="up"))


@pytest.mark.parametrize("strategy", ["imprint", "trap-weights"])
def test_multi_step_fedavg_updates_still_give_images_away(tiny, strategy: str) -> None:
    model = ("model.name=mlp", "model.options={hidden=1000}") if strategy == "trap-weights" else ()
    out = run_simulation(tiny("federation.protocol=fedavg", "federation.local_steps=3", "federation.batch_size=8",
                              "federation.num_clients=1", "federation.rounds=1", "federation.model_from_server=true",
                              "adversary.role=malicious-server", f'adversary.options={{strategy="{strategy}"}}', *model))
    (m,) = _job_metrics(out.run_dir)
    assert m["num_images"] == 24 and m["exact_recovered"] >= 8, m["psnr"]  # measured: 14 (imprint), 18 (trap)


def test_client_refuses_a_server_defined_architecture_unless_the_deployment_allows_it(tiny) -> None:
    from flwr.app import Context, RecordDict

    from clients.runtime import ArchitectureRefused, ClientRuntime
    from fl_sim.models.server_defined import architecture_spec

    runtime = ClientRuntime(tiny(), None)
    received = {k: v.clone() for k, v in runtime.model.state_dict().items()}
    spec = architecture_spec([{"kind": "input-residual", "name": "input_block", "hidden": 4}])
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    with pytest.raises(ArchitectureRefused, match="model_from_server = false"):
        runtime.train_content(received, 1, context, instruction_id="x", server_config={"architecture": spec})


# --- vetting ----------------------------------------------------------------------------------

def test_vetting_refuses_manipulated_rounds_without_false_alarms(tiny) -> None:
    out = run_simulation(tiny("model.name=mlp", "model.options={hidden=1000}", "federation.rounds=3",
                              "federation.local_steps=5", "federation.lr=0.1", "defenses=[{name=\"vetting\"}]",
                              "adversary.role=malicious-server", 'adversary.options={strategy="trap-weights", rounds=[3]}'))
    summary = json.loads((out.run_dir / "summary.json").read_text())
    vet = summary["vetting"]
    assert vet["manipulated_replies"] == 3 and vet["detected"] == 3 and vet["detection_rate"] == 1.0
    assert vet["honest_replies"] == 6 and vet["false_alarms"] == 0
    assert set(vet["detected_by_check"]) >= {"row_sign_skew", "norm_ratio"}
    for m in _job_metrics(out.run_dir):  # refused: nothing was sent, nothing recovered
        assert m["round"] == 3 and m["exact_recovered"] == 0 and "refused" in m["note"]


def test_imprint_on_a_batchnorm_model_whose_batchnorm_stays_with_the_clients(tiny) -> None:
    """FedBN: the ResNet-18's BatchNorm never leaves a client; the inserted block still gives images away."""
    out = run_simulation(tiny("data.name=cifar10-sample", "model.name=resnet18", "model.options={}",
                              "federation.num_clients=1", "federation.batch_size=8", "federation.model_from_server=true", *IMPRINT[:3],
                              'adversary.options={strategy="imprint", public="cifar100-sample"}'))
    (m,) = _job_metrics(out.run_dir)
    assert m["num_images"] == 8 and m["exact_recovered"] >= 4, m["psnr"]  # measured: 5 of 8
    log = TrafficLog.open(out.run_dir)
    for msg in log.messages():
        assert not any(".bn" in name or "running_mean" in name for name in log.tensors(msg.id))
