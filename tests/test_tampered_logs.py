"""A shared traffic log or sidecar that someone edited: no path followed out of it, each damage one line, exit 2."""

from __future__ import annotations

import os
import pickle
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from adversary.jobs import JobBook
from adversary.roles.base import AttackTarget
from adversary.traffic_log import INDEX_DB, TRAFFIC_DIR, TrafficLog, TrafficLogError
from adversary.traffic_writer import TrafficWriter
from app.cli import main
from fl_sim.ground_truth import GroundTruth, GroundTruthError, init_ground_truth, record_private_batch
from tests.test_traffic_log import _record


@pytest.fixture
def run(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    writer = TrafficWriter(run_dir)
    for i in range(3):
        writer.append(_record(i))
    writer.close()
    return run_dir


LEGACY_LOG = Path(__file__).parent / "data" / "traffic_v1"


@pytest.fixture
def legacy_run(tmp_path: Path) -> Path:
    """A log of the first format (a safetensors file a message), as its writer left it."""
    run_dir = tmp_path / "legacy"
    shutil.copytree(LEGACY_LOG, run_dir)
    return run_dir


def _index(run: Path) -> Path:
    return run / TRAFFIC_DIR / INDEX_DB


def _set_file(run: Path, msg_id: int, value: str) -> None:
    with sqlite3.connect(_index(run)) as conn:
        conn.execute("UPDATE messages SET tensor_file = ? WHERE id = ?", (value, msg_id))


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("planted", ["../../secret.safetensors", "ABSOLUTE", "tensors/../../secret.safetensors",
                                     "tensors/0000002.safetensors/../../../secret.safetensors"])
def test_a_path_in_the_index_is_not_followed_out_of_the_log(legacy_run: Path, tmp_path: Path, planted: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    run = legacy_run
    secret = tmp_path / "secret.safetensors"
    save_file({"arrays/w": np.full((2, 2), 7.0, dtype=np.float32)}, str(secret))
    _set_file(run, 2, str(secret) if planted == "ABSOLUTE" else planted)
    out = tmp_path / "export.safetensors"
    for argv in (["traffic", "export", str(run), "2", "--out", str(out)], ["traffic", "show", str(run), "2"]):
        _one_line_error(capsys, argv, "corrupted traffic log", "message 2")
    assert not out.exists() and not list(tmp_path.glob("export*"))
    assert main(["traffic", "show", str(run), "1"]) == 0  # the untouched messages still read


def test_a_linked_tensor_file_is_refused(legacy_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = legacy_run
    secret = tmp_path / "secret.safetensors"
    save_file({"arrays/w": np.zeros((64, 32), np.float32), "arrays/n": np.zeros(2, np.int64)}, str(secret))
    target = run / TRAFFIC_DIR / "tensors" / "0000002.safetensors"
    target.unlink()
    target.symlink_to(secret)
    _one_line_error(capsys, ["traffic", "show", str(run), "2"], "missing or a link")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "pickle", "deleted", "other tensors"])
def test_a_damaged_tensor_file_is_one_line_for_show_and_export(legacy_run: Path, tmp_path: Path, damage: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    run = legacy_run
    path = run / TRAFFIC_DIR / "tensors" / "0000002.safetensors"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    elif damage == "garbage":
        path.write_bytes(b"\xff" * 8 + os.urandom(200))
    elif damage == "pickle":
        path.write_bytes(pickle.dumps({"arrays/w": np.zeros(3)}))
    elif damage == "deleted":
        path.unlink()
    else:
        save_file({"arrays/other": np.zeros(3, np.float32)}, str(path))
    out = tmp_path / "x.safetensors"
    for argv in (["traffic", "show", str(run), "2"], ["traffic", "export", str(run), "2", "--out", str(out)]):
        _one_line_error(capsys, argv, "corrupted traffic log", "0000002")
    assert not out.exists()


def _blob_of(run: Path, msg_id: int, name: str = "arrays/w") -> tuple[str, str, int, int]:
    with sqlite3.connect(_index(run)) as conn:
        return conn.execute("SELECT b.digest, b.pack, b.offset, b.length FROM tensors t JOIN blobs b ON b.digest = t.blob"
                            " WHERE t.message = ? AND t.name = ?", (msg_id, name)).fetchone()


@pytest.mark.parametrize("planted", ["../../secret.bin", "ABSOLUTE", "blobs/../../secret.bin", "blobs/pack-000001.bin/../../x"])
def test_a_pack_path_in_the_index_is_not_followed_out_of_the_log(run: Path, tmp_path: Path, planted: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    digest, pack, offset, length = _blob_of(run, 2)
    secret = tmp_path / "secret.bin"
    secret.write_bytes((run / TRAFFIC_DIR / pack).read_bytes())  # the very bytes: only the path is wrong
    with sqlite3.connect(_index(run)) as conn:
        conn.execute("UPDATE blobs SET pack = ? WHERE digest = ?", (str(secret) if planted == "ABSOLUTE" else planted, digest))
    out = tmp_path / "export.safetensors"
    for argv in (["traffic", "export", str(run), "2", "--out", str(out)], ["traffic", "show", str(run), "2"]):
        _one_line_error(capsys, argv, "corrupted traffic log", "message 2", "arrays/w")
    assert not out.exists()


def test_a_linked_pack_is_refused(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, pack, _, _ = _blob_of(run, 2)
    path = run / TRAFFIC_DIR / pack
    copy = tmp_path / "copy.bin"
    copy.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(copy)
    _one_line_error(capsys, ["traffic", "show", str(run), "2"], "missing or a link")


@pytest.mark.parametrize("damage", ["flipped byte", "truncated pack", "deleted pack", "object dtype", "other shape",
                                    "no blob row", "offset past the end", "negative offset"])
def test_a_damaged_blob_is_one_line_for_show_and_export(run: Path, tmp_path: Path, damage: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    digest, pack, offset, length = _blob_of(run, 2)
    path = run / TRAFFIC_DIR / pack
    data = bytearray(path.read_bytes())
    sql = {"object dtype": ("UPDATE tensors SET dtype = '|O' WHERE blob = ?", (digest,)),
           "other shape": ("UPDATE tensors SET shape = '[32, 32]' WHERE blob = ?", (digest,)),
           "no blob row": ("DELETE FROM blobs WHERE digest = ?", (digest,)),
           "offset past the end": ("UPDATE blobs SET offset = ? WHERE digest = ?", (len(data), digest)),
           "negative offset": ("UPDATE blobs SET offset = -8 WHERE digest = ?", (digest,))}.get(damage)
    if damage == "flipped byte":
        data[offset + length // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "truncated pack":
        path.write_bytes(bytes(data[: offset + length - 1]))
    elif damage == "deleted pack":
        path.unlink()
    else:
        with sqlite3.connect(_index(run)) as conn:
            conn.execute(*sql)
    out = tmp_path / "x.safetensors"
    for argv in (["traffic", "show", str(run), "2"], ["traffic", "export", str(run), "2", "--out", str(out)]):
        _one_line_error(capsys, argv, "corrupted traffic log", "message 2")
    assert not out.exists()
    if damage != "deleted pack":  # the other messages' blobs still read
        assert main(["traffic", "show", str(run), "1"]) == 0


@pytest.mark.parametrize("damage", ["zero bytes", "truncated", "random bytes"])
def test_a_damaged_index_is_one_line_for_every_traffic_command(run: Path, damage: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    for extra in ("-wal", "-shm"):
        Path(str(_index(run)) + extra).unlink(missing_ok=True)
    data = _index(run).read_bytes()
    _index(run).write_bytes({"zero bytes": b"", "truncated": data[:1500], "random bytes": os.urandom(len(data))}[damage])
    for argv in (["traffic", "list", str(run)], ["traffic", "show", str(run), "1"]):
        _one_line_error(capsys, argv, "traffic log")


def test_a_log_in_a_folder_it_cannot_write_opens_immutable(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for extra in ("-wal", "-shm"):
        assert not Path(str(_index(run)) + extra).exists()  # the writer closed: checkpointed
    monkeypatch.setattr("adversary.traffic_log.os.access", lambda path, mode: False)  # root ignores chmod: say it
    with TrafficLog.open(run) as log:
        assert len(log) == 3 and log.arrays(2)["arrays/w"].shape == (64, 32)
    assert not Path(str(_index(run)) + "-shm").exists()  # immutable: SQLite made nothing beside it


def test_a_path_in_the_sidecar_is_not_followed(tmp_path: Path) -> None:
    init_ground_truth(tmp_path)
    record_private_batch(tmp_path, instruction_id="abc-1", node_id=5, partition_id=0, round=1,
                         steps=[{"images": np.zeros((1, 1, 2, 2), np.float32)}])
    truth = GroundTruth.open(tmp_path)
    assert truth.batch_for("abc-1").steps[0]["images"].shape == (1, 1, 2, 2)
    with sqlite3.connect(tmp_path / "ground_truth" / "index.sqlite") as conn:
        conn.execute("UPDATE batches SET file = '../traffic/tensors/0000001.safetensors'")
    with pytest.raises(GroundTruthError, match="corrupted ground-truth sidecar"):
        truth.batch_for("abc-1")
    with pytest.raises(ValueError, match="not a plain name"):
        record_private_batch(tmp_path, instruction_id="../escape", node_id=5, partition_id=0, round=1, steps=[])
    assert not (tmp_path / "escape.safetensors").exists()


def test_the_job_book_gives_outputs_only_inside_the_run(tmp_path: Path) -> None:
    book = JobBook(tmp_path)
    job = book.add("eavesdropper", AttackTarget("update", 1, (1,)), "audit", {}, {})
    book.mark(job, "done", out_dir="/etc")
    other = book.add("eavesdropper", AttackTarget("update", 1, (2,)), "audit", {}, {})
    book.mark(other, "done", out_dir="..")
    outs = {j.id: j.out_dir for j in book.jobs()}
    book.close()
    assert outs[job] == str(tmp_path / "attacks" / "etc") and outs[other] is None


def test_traffic_errors_are_traffic_log_errors(run: Path) -> None:
    _set_file(run, 2, "/etc/passwd")
    with TrafficLog.open(run) as log, pytest.raises(TrafficLogError):
        log.tensors(2)
