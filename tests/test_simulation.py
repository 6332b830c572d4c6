"""End-to-end federated runs on the inline engine: protocols, FedBN, determinism, tap."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from adversary.traffic_log import TrafficLog
from app.simulation import run_simulation
from clients.training import gradient_step
from fl_sim.ground_truth import GroundTruth
from fl_sim.models import bn_state_keys
from fl_sim.task import load_task
from server.rounds import FINAL_WEIGHTS


def _final(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / FINAL_WEIGHTS))


def _strip(name: str) -> str:
    return name.split("/", 1)[1]


def test_fedsgd_round_is_one_averaged_gradient_step(tiny) -> None:
    cfg = tiny("federation.protocol=fedsgd", "federation.rounds=1", "federation.lr=0.5")
    out = run_simulation(cfg)
    log = TrafficLog.open(out.run_dir)
    down = log.messages(direction="down", message_type="train")
    up = log.messages(direction="up")
    assert len(down) == len(up) == 3
    start = log.tensors(down[0].id, "arrays")
    grads = [log.tensors(m.id, "arrays") for m in up]
    final = _final(out.run_dir)
    assert set(final) == set(start) == set(grads[0])
    for key in final:
        mean = torch.stack([g[key] for g in grads]).double().mean(0)
        expected = start[key].double() - 0.5 * mean
        torch.testing.assert_close(final[key].double(), expected, atol=1e-6, rtol=1e-5)


def test_fedsgd_gradient_matches_private_batch(tiny) -> None:
    """What the tap logged is exactly the gradient of the recorded private batch."""
    cfg = tiny("federation.protocol=fedsgd", "federation.rounds=1")
    out = run_simulation(cfg)
    log, truth = TrafficLog.open(out.run_dir), GroundTruth.open(out.run_dir)
    reply = log.messages(direction="up")[0]
    batch = truth.batch_for(reply.reply_to)
    assert batch is not None and batch.round == 1 and len(batch.steps) == 1
    step = batch.steps[0]
    assert step["images"].shape == (8, 1, 28, 28) and step["labels"].shape == (8,)
    task = load_task(cfg)
    model = task.new_model()
    model.load_state_dict(log.tensors(log.messages(direction="down")[0].id, "arrays"), strict=False)
    _, grads, _ = gradient_step(model, torch.from_numpy(step["images"]), torch.from_numpy(step["labels"]), dict(model.named_parameters()))
    logged = log.tensors(reply.id, "arrays")
    for key, g in logged.items():
        torch.testing.assert_close(g, grads[key], atol=1e-6, rtol=1e-5)
    # The sidecar knows the partition; the attacker's log does not carry it anywhere.
    assert truth.partition_of(reply.src_node) in {0, 1, 2}
    assert "partition" not in repr(reply).lower()


@pytest.mark.parametrize("upload", ["weights", "delta"])
def test_fedavg_aggregate_is_mean_of_client_models(tiny, upload: str) -> None:
    cfg = tiny("federation.protocol=fedavg", "federation.rounds=1", f"federation.upload={upload}")
    out = run_simulation(cfg)
    log = TrafficLog.open(out.run_dir)
    start = log.tensors(log.messages(direction="down")[0].id, "arrays")
    uploads = [log.tensors(m.id, "arrays") for m in log.messages(direction="up")]
    final = _final(out.run_dir)
    for key in final:
        mean = torch.stack([u[key] for u in uploads]).double().mean(0)
        expected = mean + start[key].double() if upload == "delta" else mean
        torch.testing.assert_close(final[key].double(), expected, atol=1e-6, rtol=1e-5)
        assert not torch.equal(final[key], start[key])


def test_fedavg_learns_on_mnist(tiny) -> None:
    cfg = tiny("federation.rounds=4", "federation.local_steps=15", "federation.batch_size=32", "federation.lr=0.1", "model.options.width=16")
    out = run_simulation(cfg)
    accs = [r.eval_acc for r in out.result.rounds]
    assert accs[-1] > 0.5, accs  # 10 classes: chance is 0.1
    lines = (out.run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4
    parts = json.loads((out.run_dir / "partitions.json").read_text())
    assert sum(parts["sizes"]) == 4000 and sum(map(sum, parts["label_histogram"])) == 4000


@pytest.mark.parametrize("protocol", ["fedsgd", "fedavg"])
def test_fedbn_no_batchnorm_tensor_leaves_a_client(tiny, protocol: str) -> None:
    cfg = tiny("model.name=resnet18", "model.options={}", "federation.num_clients=2", "federation.rounds=2",
               "federation.batch_size=4", "federation.local_steps=1", "data.max_test=16", f"federation.protocol={protocol}")
    out = run_simulation(cfg)
    model = load_task(cfg).new_model()
    bn = bn_state_keys(model)
    assert len(bn) == 100  # 20 BN layers x 5 entries
    log = TrafficLog.open(out.run_dir)
    names = {_strip(t.name) for m in log.messages() for t in m.tensors}
    assert names, "the tap recorded no tensors"
    assert not names & bn
    # Evaluation ran on the clients, with their own BN layers.
    assert log.messages(message_type="evaluate")


def test_without_fedbn_batchnorm_statistics_are_sent(tiny) -> None:
    cfg = tiny("model.name=resnet18", "model.options={}", "federation.num_clients=2", "federation.rounds=1",
               "federation.batch_size=4", "federation.protocol=fedsgd", "federation.fedbn=false", "data.max_test=16")
    out = run_simulation(cfg)
    log = TrafficLog.open(out.run_dir)
    up = log.messages(direction="up")[0]
    names = {t.name for t in up.tensors}
    assert "buffers/net.bn1.running_mean" in names and "arrays/net.bn1.weight" in names


def test_same_seed_same_weights_and_other_seed_differs(tiny) -> None:
    args = ("federation.num_clients=4", "federation.clients_per_round=2", "tap.enabled=false", "tap.ground_truth=false")
    a = _final(run_simulation(tiny(*args)).run_dir)
    b = _final(run_simulation(tiny(*args)).run_dir)
    c = _final(run_simulation(tiny(*args, "seed=1")).run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_traffic_log_round_trip_and_queries(tiny, tmp_path: Path) -> None:
    cfg = tiny()
    out = run_simulation(cfg)
    log = TrafficLog.open(out.run_dir)
    assert len(log) == 2 * 3 * 2  # rounds x clients x (down + up)
    assert log.rounds() == [1, 2]
    clients = log.clients()
    assert len(clients) == 3
    one = log.messages(round=2, client=clients[0])
    assert [m.direction for m in one] == ["down", "up"]
    first_down = log.messages(round=1, direction="down")[0]
    initial = load_task(cfg).new_model().state_dict()
    for name, tensor in log.tensors(first_down.id, "arrays").items():
        assert torch.equal(tensor, initial[name])
    info = log.message(one[1].id)
    assert info.num_bytes > sum(int(np.prod(t.shape)) * 4 for t in info.tensors)
    assert len(info.sha256) == 64 and info.metrics["metrics/num-examples"] == 16
    assert info.config == {}
    assert first_down.config["config/server-round"] == 1
    exported = log.export(info.id, tmp_path / "m.safetensors")
    back = load_file(str(exported))
    for name, tensor in log.tensors(info.id).items():
        assert torch.equal(back[name], tensor)
    assert {t.name for t in info.tensors} == set(back)
