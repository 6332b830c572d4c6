"""Traffic log storage: round trip of arbitrary tensors, and safety under SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from adversary.traffic_log import OutgoingRecord, TrafficLog, TrafficLogError, TrafficWriter


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
    from adversary.traffic_log import TrafficWriter
    writer = TrafficWriter(sys.argv[1])
    for i in range(100000):
        msg_id = writer.append(_record(i))
        print(msg_id, flush=True)
    """
)


def test_sigkill_leaves_every_committed_message_readable(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
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
