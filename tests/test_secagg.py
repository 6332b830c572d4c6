"""Secure aggregation (Flower's SecAgg+, legacy API): correct aggregate, nothing plain on the wire."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from adversary.traffic_log import MessageInfo, TrafficLog
from app.simulation import run_simulation
from clients.training import gradient_step
from fl_sim.config import ConfigError
from fl_sim.ground_truth import GroundTruth
from fl_sim.models import bn_state_keys
from fl_sim.task import load_task
from server.rounds import FINAL_WEIGHTS
from tests.conftest import TINY, tiny_config

STAGES = ["setup", "share_keys", "collect_masked_vectors", "unmask"]
MASKED = "secaggplus_configs/masked_params/"


def _final(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / FINAL_WEIGHTS))


def _quant_step(clipping_range: float, quantization_range: int = 2**22) -> float:
    return 2 * clipping_range / quantization_range


def _replies_by_stage(log: TrafficLog, rnd: int) -> dict[str, list[tuple[MessageInfo, MessageInfo]]]:
    """(instruction, reply) pairs of a round's SecAgg+ train messages, by stage."""
    down = {m.flower_id: m for m in log.messages(round=rnd, direction="down", message_type="train")}
    out: dict[str, list[tuple[MessageInfo, MessageInfo]]] = {s: [] for s in STAGES}
    for reply in log.messages(round=rnd, direction="up", message_type="train"):
        instruction = down[reply.reply_to]
        out[instruction.config["secaggplus_configs/stage"]].append((instruction, reply))
    return out


def _global_model(log: TrafficLog, instruction: MessageInfo, keys: list[str]) -> dict[str, torch.Tensor]:
    """The global tensors of a collect_masked_vectors instruction (legacy lists are in shared-key order)."""
    arrays = log.tensors(instruction.id, "fitins.parameters")
    return {key: arrays[str(i)] for i, key in enumerate(keys)}


def _flat(tensors: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(t, dtype=np.float64).ravel() for t in tensors])


def _assert_no_plain_update(log: TrafficLog, updates: dict[int, dict[str, torch.Tensor]], keys: list[str]) -> None:
    """No up message carries a tensor equal or close to, or correlated with, a client's true update."""
    truth = {node: [u[k].numpy() for k in keys] for node, u in updates.items()}
    masked_seen = 0
    for reply in log.messages(direction="up"):
        arrays = log.arrays(reply.id)
        for name, array in arrays.items():
            assert name.startswith(MASKED) and array.dtype == np.int64, (name, array.dtype)
            assert array.min() >= 0 and array.max() < 2**32
            for update in truth.values():
                for plain in update:
                    if plain.shape == array.shape and plain.size > 1:
                        assert not np.allclose(array, plain, atol=1e-3)
        if not arrays:
            continue
        masked_seen += 1
        vector = [arrays[f"{MASKED}{i + 1}"] for i in range(len(keys))]  # entry 0: the masked weight factor
        masked = _flat(vector)
        for node, update in truth.items():
            r = np.corrcoef(masked, _flat(update))[0, 1]
            assert abs(r) < 0.05, (reply.src_node, node, r)
            # Dequantizing the masked values does not help: masks are uniform mod 2**32.
            assert abs(np.corrcoef(masked % 2**22, _flat(update))[0, 1]) < 0.05
    assert masked_seen == len(updates)


def test_secagg_fedsgd_inline_aggregate_is_the_mean_gradient_and_nothing_leaks(tiny) -> None:
    clip = 1.0
    cfg = tiny("federation.secagg=true", "federation.protocol=fedsgd", "federation.rounds=1", "federation.lr=0.5",
               f"secagg.clipping_range={clip}")
    out = run_simulation(cfg)
    log, truth = TrafficLog.open(out.run_dir), GroundTruth.open(out.run_dir)
    task = load_task(cfg)
    model = task.new_model()
    keys = task.shared_keys(model)

    # The four SecAgg+ stages, once per client, every message in round 1.
    stages = _replies_by_stage(log, 1)
    assert {s: len(v) for s, v in stages.items()} == {s: 3 for s in STAGES}
    assert log.rounds() == [1] and all(m.round == 1 for m in log.messages())
    assert not log.messages(message_type="evaluate")  # server-side evaluation
    for _, reply in stages["setup"]:
        assert set(reply.config) == {"secaggplus_configs/pk1", "secaggplus_configs/pk2"} and not reply.tensors
    for _, reply in stages["share_keys"]:
        assert set(reply.config) == {"secaggplus_configs/dsts", "secaggplus_configs/ctxts"} and not reply.tensors
    for _, reply in stages["unmask"]:
        assert set(reply.config) == {"secaggplus_configs/nids", "secaggplus_configs/shares"} and not reply.tensors
    for _, reply in stages["collect_masked_vectors"]:
        assert [t.name for t in reply.tensors] == [f"{MASKED}{i}" for i in range(len(keys) + 1)]
        assert {t.dtype for t in reply.tensors} == {"int64"}

    # Each client's true gradient, recomputed from its private batch in the sidecar.
    grads: dict[int, dict[str, torch.Tensor]] = {}
    start = None
    for instruction, reply in stages["collect_masked_vectors"]:
        batch = truth.batch_for(reply.reply_to)
        assert batch is not None and batch.round == 1 and batch.node_id == reply.src_node
        assert truth.batch_for_round(1, reply.src_node).instruction_id == reply.reply_to
        start = _global_model(log, instruction, keys)
        model.load_state_dict(start, strict=False)
        step = batch.steps[0]
        _, g, _ = gradient_step(model, torch.from_numpy(step["images"]), torch.from_numpy(step["labels"]),
                                dict(model.named_parameters()))
        grads[reply.src_node] = {k: g[k].detach() for k in keys}
    assert start is not None
    largest = max(float(g.abs().max()) for u in grads.values() for g in u.values())
    assert largest < clip, f"gradients ({largest}) exceed the clipping range; the check below would not hold"

    final = _final(out.run_dir)
    tol = 0.5 * _quant_step(clip) * 1.01 + 1e-6  # lr x quantization step, plus float32 rounding
    worst = 0.0
    for key in keys:
        mean = torch.stack([u[key] for u in grads.values()]).double().mean(0)
        expected = start[key].double() - 0.5 * mean
        worst = max(worst, float((final[key].double() - expected).abs().max()))
    assert worst <= tol, (worst, tol)

    _assert_no_plain_update(log, grads, keys)


def test_secagg_fedavg_inline_matches_the_plain_run(tmp_path: Path) -> None:
    """Same seed with and without SecAgg+: same clients, batches and (within quantization) weights."""
    args = ("federation.protocol=fedavg", "federation.rounds=1", "federation.upload=delta", "secagg.clipping_range=0.5")
    plain = run_simulation(tiny_config(tmp_path / "plain", *args))
    secure = run_simulation(tiny_config(tmp_path / "secure", *args, "federation.secagg=true"))
    a, b = _final(plain.run_dir), _final(secure.run_dir)
    assert set(a) == set(b)
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    assert worst <= _quant_step(0.5) * 1.01 + 1e-6, worst
    assert worst > 0  # stochastic rounding: not bit-identical

    # Same metrics rows and result shape as the Message-API loop.
    rows_a = [json.loads(x) for x in (plain.run_dir / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (secure.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [set(r) for r in rows_a] == [set(r) for r in rows_b] and len(rows_b) == 1
    assert rows_b[0]["clients"] == 3 and rows_b[0]["train_loss"] == pytest.approx(rows_a[0]["train_loss"], rel=1e-6)
    assert rows_b[0]["eval_acc"] == pytest.approx(rows_a[0]["eval_acc"], abs=0.01)
    assert secure.result.rounds[0].round == 1 and set(secure.result.final_state) == set(a)

    # The plain run's uploads are the clients' true deltas; the SecAgg+ log holds none of them.
    plain_log, secure_log = TrafficLog.open(plain.run_dir), TrafficLog.open(secure.run_dir)
    keys = load_task(tiny_config(tmp_path, *args)).shared_keys(load_task(tiny_config(tmp_path, *args)).new_model())
    deltas = {m.src_node: log_arrays for m in plain_log.messages(direction="up")
              for log_arrays in [plain_log.tensors(m.id, "arrays")]}
    assert set(deltas) == set(secure_log.clients())
    _assert_no_plain_update(secure_log, deltas, keys)
    assert secure_log.rounds() == [1]


def test_secagg_two_rounds_with_partial_participation(tiny) -> None:
    cfg = tiny("federation.secagg=true", "federation.num_clients=4", "federation.clients_per_round=3",
               "federation.rounds=2", "federation.local_steps=1")
    out = run_simulation(cfg)
    assert [r.round for r in out.result.rounds] == [1, 2]
    log = TrafficLog.open(out.run_dir)
    assert log.rounds() == [1, 2]
    for rnd in (1, 2):
        stages = _replies_by_stage(log, rnd)
        assert {s: len(v) for s, v in stages.items()} == {s: 3 for s in STAGES}
    # The same clients as the Message-API loop would sample (same seeded draw over node ids).
    plain = run_simulation(tiny(*[a for a in ("federation.num_clients=4", "federation.clients_per_round=3",
                                              "federation.rounds=2", "federation.local_steps=1")]))
    plain_log = TrafficLog.open(plain.run_dir)
    for rnd in (1, 2):
        picked = sorted(m.dst_node for m in plain_log.messages(round=rnd, direction="down"))
        secure = sorted(i.dst_node for i, _ in _replies_by_stage(log, rnd)["collect_masked_vectors"])
        assert picked == secure
    a, b = _final(plain.run_dir), _final(out.run_dir)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-3


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("secagg.num_shares=2", "secagg.num_shares: as an int it must be >= 3"),
        ("secagg.num_shares=1.5", "secagg.num_shares: as a float it must be in (0, 1]"),
        ("secagg.num_shares=4", "secagg.num_shares: must be <= the clients per round (3)"),
        ("secagg.reconstruction_threshold=1", "secagg.reconstruction_threshold: as an int it must be >= 2"),
        ("secagg.modulus_range=1000", "secagg.modulus_range: must be a power of 2"),
        ("secagg.clipping_range=0", "secagg.clipping_range:"),
        ("federation.clients_per_round=1", "federation.secagg: secure aggregation needs at least 2 clients"),
        ("secagg.max_weight=4", "secagg.max_weight: must be >= the most examples a client reports per round (16)"),
        ("secagg.quantization_range=1073741824", None),
        ("secagg.quantization_range=1073741824 federation.num_clients=4", "secagg.quantization_range: 4 clients"),
    ],
)
def test_secagg_config_errors_are_one_line(tmp_path: Path, override: str, message: str | None) -> None:
    args = ["federation.secagg=true", *override.split()]
    if message is None:
        assert tiny_config(tmp_path, *args).federation.secagg
        return
    with pytest.raises(ConfigError) as err:
        tiny_config(tmp_path, *args)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


@pytest.mark.slow
def test_secagg_fedbn_with_client_side_evaluation(tiny) -> None:
    """ResNet-18 with FedBN: BN state stays home, evaluation runs on the clients (legacy evaluate)."""
    cfg = tiny("federation.secagg=true", "model.name=resnet18", "model.options={}", "federation.num_clients=3",
               "federation.rounds=2", "federation.batch_size=4", "federation.local_steps=1", "data.max_test=16",
               "federation.protocol=fedsgd")
    out = run_simulation(cfg)
    assert len(out.result.rounds) == 2
    log = TrafficLog.open(out.run_dir)
    assert len(log.messages(message_type="evaluate", direction="up")) == 2 * 3
    bn = bn_state_keys(load_task(cfg).new_model())
    assert len(out.result.final_state) == len(load_task(cfg).shared_keys(load_task(cfg).new_model()))
    assert not set(out.result.final_state) & bn


@pytest.mark.slow
def test_secagg_on_the_ray_engine(tmp_path: Path) -> None:
    args = [a for a in TINY if not a.startswith("engine.name")] + [f"out_dir={tmp_path}", "federation.rounds=1",
                                                                     "federation.upload=delta", "secagg.clipping_range=0.5"]
    from fl_sim.config import load_config

    ray = run_simulation(load_config(None, [*args, "engine.name=ray", "federation.secagg=true"]))
    inline = run_simulation(load_config(None, [*args, "engine.name=inline"]))
    a, b = _final(ray.run_dir), _final(inline.run_dir)
    assert max(float((a[k].double() - b[k].double()).abs().max()) for k in a) <= _quant_step(0.5) * 1.01 + 1e-5
    log = TrafficLog.open(ray.run_dir)
    stages = _replies_by_stage(log, 1)
    assert {s: len(v) for s, v in stages.items()} == {s: 3 for s in STAGES}
    truth = GroundTruth.open(ray.run_dir)
    assert all(truth.batch_for(reply.reply_to) is not None for _, reply in stages["collect_masked_vectors"])


def test_secagg_client_warns_when_its_update_is_clipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from flwr.app import Context, RecordDict

    from clients.runtime import ClientRuntime
    from clients.secagg import SecAggClient

    cfg = tiny_config(tmp_path, "federation.secagg=true", "federation.protocol=fedsgd", "secagg.clipping_range=1e-6")
    task = load_task(cfg)
    model = task.new_model()
    keys = task.shared_keys(model)
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 3}, state=RecordDict(), run_config={})
    client = SecAggClient(ClientRuntime(cfg, None), context)
    arrays, num_examples, metrics = client.fit([model.state_dict()[k].numpy() for k in keys], {"server-round": 1})
    assert num_examples == 8 and metrics["num-examples"] == 8 and len(arrays) == len(keys)
    assert [a.shape for a in arrays] == [tuple(model.state_dict()[k].shape) for k in keys]
    assert "beyond secagg.clipping_range=1e-06" in caplog.text
