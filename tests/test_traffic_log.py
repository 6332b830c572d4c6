"""Traffic log storage: round trip of arbitrary tensors, and safety under SIGKILL."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array

from adversary.payload import payload_of_array
from adversary.traffic_log import OutgoingRecord, TrafficLog, TrafficLogError
from adversary.traffic_writer import TrafficWriter


def _record(i: int) -> OutgoingRecord:
    rng = np.random.default_rng(i)
    return OutgoingRecord(
        round=i // 4, direction="up" if i % 2 else "down", src_node=2**64 - 1 - i, dst_node=1,
        message_type="train", flower_id=f"id-{i}", reply_to=None, group_id=str(i // 4),
        num_bytes=1000 + i, sha256="0" * 64, created_at=float(i), metrics={"metrics/loss": 0.5 * i},
        config={"config/server-round": i // 4},
        tensors={"arrays/w": rng.standard_normal((64, 32)).astype(np.float32), "arrays/n": np.arange(i + 1, dtype=np.int64)},
    )


def test_round_trip_keeps_tensors_metadata_and_uint64_node_ids(tmp_path: Path) -> None:
    writer = TrafficWriter(tmp_path)
    for i in range(6):
        writer.append(_record(i))
    writer.close()
    log = TrafficLog.open(tmp_path)
    assert len(log) == 6
    info = log.message(4)
    assert info.src_node == 2**64 - 1 - 3 and info.round == 0
    assert [t.name for t in info.tensors] == ["arrays/w", "arrays/n"]
    np.testing.assert_array_equal(log.arrays(4)["arrays/w"], _record(3).tensors["arrays/w"])
    assert info.tensors[0].l2 == pytest.approx(float(np.linalg.norm(_record(3).tensors["arrays/w"])), rel=1e-6)
    assert [m.id for m in log.messages(direction="up")] == [2, 4, 6]
    assert [m.id for m in log.messages(client=2**64 - 1 - 5)] == [6]
    with pytest.raises(TrafficLogError, match="MSG_ID: no message 99"):
        log.message(99)
    with pytest.raises(TrafficLogError, match="--direction"):
        log.messages(direction="sideways")


_WRITER = textwrap.dedent(
    """
    import sys
    from tests.test_traffic_log import _record
    from adversary.traffic_writer import TrafficWriter
    writer = TrafficWriter(sys.argv[1])
    for i in range(100000):
        if sys.argv[2] == "append":
            print(writer.append(_record(i)), flush=True)
        else:  # handed over: the id is printed from the writer's thread once committed
            writer.submit(_record(i), then=lambda msg_id: print(msg_id, flush=True))
    """
)


@pytest.mark.parametrize("mode", ["append", "submit"])
def test_sigkill_leaves_every_committed_message_readable(tmp_path: Path, mode: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path), mode], stdout=subprocess.PIPE, text=True,
        cwd=Path(__file__).parent.parent,
    )
    committed = 0
    assert proc.stdout is not None
    for line in proc.stdout:
        committed = int(line)
        if committed >= 40:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    log = TrafficLog.open(tmp_path)
    assert len(log) >= committed
    for info in log.messages():
        arrays = log.arrays(info.id)
        expected = _record(info.id - 1).tensors
        assert set(arrays) == set(expected)
        np.testing.assert_array_equal(arrays["arrays/w"], expected["arrays/w"])


def _write_private(args: tuple[str, int]) -> None:
    from fl_sim.ground_truth import record_private_batch

    run_dir, i = args
    step = {"images": np.full((2, 1, 4, 4), i, np.float32), "labels": np.array([i, i], np.int64)}
    record_private_batch(run_dir, instruction_id=f"msg-{i}", node_id=100 + i, partition_id=i, round=1, steps=[step])


def test_many_clients_create_and_write_the_sidecar_at_once(tmp_path: Path) -> None:
    """Client processes racing to create the sidecar index must all succeed (WAL switch contention)."""
    import multiprocessing

    from fl_sim.ground_truth import GroundTruth

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(6) as pool:
        pool.map(_write_private, [(str(tmp_path), i) for i in range(12)])
    truth = GroundTruth.open(tmp_path)
    assert len(truth) == 12
    assert float(truth.batch_for("msg-7").steps[0]["images"].mean()) == 7.0


LEGACY_LOG = Path(__file__).parent / "data" / "traffic_v1"


def _legacy_model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)  # how tests/data/traffic_v1 was written
    return {"arrays/conv.weight": rng.standard_normal((4, 1, 3, 3)).astype(np.float32),
            "arrays/fc.bias": np.arange(3, dtype=np.float32)}


def test_a_log_of_the_first_format_reads_and_takes_new_messages(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(LEGACY_LOG, run)
    model = _legacy_model()
    with TrafficLog.open(run) as log:
        assert len(log) == 3 and log.message(2).src_node == 2**63 + 5 and log.message(3).error == "1: client failed"
        up = log.arrays(2)
        np.testing.assert_array_equal(up["arrays/conv.weight"], model["arrays/conv.weight"] * 0.5)
        assert up["buffers/bn.num_batches_tracked"].item() == 3 and log.arrays(3) == {}
    writer = TrafficWriter(run)  # the old log gains the new format's tables and keeps its messages
    writer.append(_record(1))
    writer.append(replace(_record(2), tensors={"arrays/conv.weight": model["arrays/conv.weight"]}))
    writer.close()
    with TrafficLog.open(run) as log:
        np.testing.assert_array_equal(log.arrays(1)["arrays/conv.weight"], model["arrays/conv.weight"])
        np.testing.assert_array_equal(log.arrays(4)["arrays/w"], _record(1).tensors["arrays/w"])
        np.testing.assert_array_equal(log.arrays(5)["arrays/conv.weight"], model["arrays/conv.weight"])
    assert [p.name for p in (run / "traffic" / "blobs").iterdir()] == ["pack-000001.bin"]


def _pack_bytes(run: Path) -> int:
    return sum(p.stat().st_size for p in (run / "traffic" / "blobs").iterdir())


def test_each_distinct_tensor_is_stored_once(tmp_path: Path) -> None:
    """A broadcast to many clients and an evaluation of the same model cost one copy; each upload its own."""
    rng = np.random.default_rng(0)
    model = {"arrays/w": rng.standard_normal((256, 64)).astype(np.float32), "arrays/b": np.zeros(64, np.float32)}
    raw = {k: payload_of_array(Array(v)) for k, v in model.items()}  # one Flower Array each, as a strategy sends
    size = sum(v.nbytes for v in model.values())
    writer = TrafficWriter(tmp_path)
    base = _record(0)
    for node in range(20):
        writer.submit(replace(base, direction="down", dst_node=node, message_type="train", tensors=raw))
    for node in range(20):
        writer.submit(replace(base, direction="down", dst_node=node, message_type="evaluate",
                              tensors={k: v.copy() for k, v in model.items()}))  # equal content, other objects
    writer.flush()
    assert _pack_bytes(tmp_path) == size
    for node in range(5):
        update = {k: v + node + 1 for k, v in model.items()}
        writer.submit(replace(base, direction="up", src_node=node, tensors=update))
    writer.close()
    assert _pack_bytes(tmp_path) == 6 * size  # the broadcast once, each upload once
    with TrafficLog.open(tmp_path) as log:
        downs = log.messages(direction="down")
        assert len(downs) == 40 and len({m.sha256 for m in downs}) == 1  # the digest is the content's
        np.testing.assert_array_equal(log.arrays(downs[-1].id)["arrays/w"], model["arrays/w"])
        last = log.arrays(len(log))
        np.testing.assert_array_equal(last["arrays/b"], np.full(64, 5, np.float32))
        assert downs[0].tensors[0].l2 == pytest.approx(float(np.linalg.norm(model["arrays/w"])), rel=1e-6)


def test_work_handed_over_runs_in_order_after_commit_and_a_failed_write_is_raised(tmp_path: Path) -> None:
    writer = TrafficWriter(tmp_path, queue_bytes=1)  # the tap waits for each message: backpressure
    seen: list[tuple[int, int]] = []

    def committed() -> int:
        with TrafficLog.open(tmp_path) as log:
            return len(log)

    for i in range(6):
        writer.submit(_record(i), then=lambda msg_id: seen.append((msg_id, committed())))
    writer.call_after(lambda: seen.append((0, committed())))
    writer.flush()
    assert seen == [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (0, 6)]  # each callback sees its message committed
    bad = replace(_record(7), tensors={"arrays/x": np.zeros(3, np.float32)}, metrics={"metrics/x": object()})
    writer.submit(bad)
    with pytest.raises(RuntimeError, match="could not be written"):
        writer.flush()
    with pytest.raises(RuntimeError, match="could not be written"):
        writer.submit(_record(8))
    with pytest.raises(RuntimeError):
        writer.close()
    with TrafficLog.open(tmp_path) as log:
        assert len(log) == 6  # the failed message left nothing behind
