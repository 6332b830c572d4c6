"""The role's own process: confined by Landlock, fed messages as data, its answers checked, stopped when it misbehaves."""

from __future__ import annotations

import sqlite3
import textwrap
from pathlib import Path

import numpy as np
import pytest

from adversary import confinement, role_process
from adversary.role_process import Confinement, RoleFault, RoleProcess, checked_target
from adversary.roles import AttackTarget, Intercept, RoleContext
from adversary.traffic_log import OutgoingRecord, TrafficLog
from adversary.traffic_writer import TrafficWriter

NO_LANDLOCK = confinement.landlock_unavailable()
needs_landlock = pytest.mark.skipif(NO_LANDLOCK is not None, reason=f"no Landlock here: {NO_LANDLOCK}")

ROLES = '''
import os, sqlite3, sys, time
from pathlib import Path
from adversary.roles import AttackTarget, Role

class Echo(Role):
    """Attacks every upload; tells what it could open in its scratch folder and the project folder."""
    def __init__(self, *, context):
        self.context = context
    def sees(self, event):
        return True
    def observe(self, event, log):
        assert event.message is not None and event.message.metrics == {"metrics/train-loss": 2.5}
        assert [t.name for t in log.message(event.log_id).tensors] == ["arrays/w"]
        import tempfile
        with tempfile.TemporaryFile() as fh:  # a private scratch folder works
            fh.write(b"x")
        print("a role's print goes to stderr, not into the protocol")
        return [AttackTarget("update", event.round, (event.log_id,), client=event.src_node)]

class Peek(Echo):
    def observe(self, event, log):
        secret = Path(os.environ["RUN_DIR"]) / "ground_truth" / "labels.txt"
        return [AttackTarget("update", event.round, (event.log_id,), client=len(secret.read_text()))]

class Sleepy(Echo):
    def observe(self, event, log):
        time.sleep(60)

class Quits(Echo):
    def observe(self, event, log):
        os._exit(3)

class Liar(Echo):
    """Finds the protocol's pipe among its descriptors and writes into it."""
    def observe(self, event, log):
        import stat
        for fd in range(3, 64):
            try:
                if stat.S_ISFIFO(os.fstat(fd).st_mode):
                    os.write(fd, b"not json\\n")
            except OSError:
                pass
        return []

class WrongType(Echo):
    def observe(self, event, log):
        return ["update"]
'''


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A project folder that holds both the plug-in module and the run directory (runs/r1), on sys.path."""
    root = tmp_path / "project"
    run = root / "runs" / "r1"
    (run / "ground_truth").mkdir(parents=True)
    (run / "ground_truth" / "labels.txt").write_text("3 1 4 1 5")
    (root / "project_roles.py").write_text(ROLES)
    writer = TrafficWriter(run)
    writer.append(OutgoingRecord(round=1, direction="up", src_node=7, dst_node=0, message_type="train", flower_id="a",
                                 reply_to="i1", num_bytes=1, sha256="0", created_at=0.0,
                                 metrics={"metrics/train-loss": 2.5}, config={}, tensors={"arrays/w": np.ones(3)}))
    writer.close()
    monkeypatch.setenv("RUN_DIR", str(run))
    return root, run


def _event(run: Path) -> Intercept:
    with TrafficLog.open(run) as log:
        message = log.message(1)
    return Intercept(1, 1, "up", 7, 0, "train", message)


def _process(project: tuple[Path, Path], role: str) -> RoleProcess:
    root, run = project
    return RoleProcess(run, f"project_roles:{role}", {}, RoleContext(), [str(root)])


def _fault(project: tuple[Path, Path], role: str) -> RoleFault:
    """What the role's process fails with when it is handed the log's one message."""
    proc = _process(project, role)
    try:
        proc.start()
        with pytest.raises(RoleFault) as fault:
            proc.observe(_event(project[1]))
    finally:
        proc.close()
    return fault.value


def test_a_plug_in_beside_the_run_directory_loads_and_answers(project: tuple[Path, Path],
                                                              capfd: pytest.CaptureFixture[str]) -> None:
    proc = _process(project, "Echo")
    try:
        said = proc.start()
        assert said.confined is (NO_LANDLOCK is None)
        assert proc.observe(_event(project[1])) == [AttackTarget("update", 1, (1,), client=7)]
    finally:
        proc.close()
    assert "a role's print goes to stderr" in capfd.readouterr().err
    assert not proc.scratch.exists()


@needs_landlock
def test_the_confined_role_cannot_open_the_run_directory(project: tuple[Path, Path]) -> None:
    fault = _fault(project, "Peek")
    assert fault.stage == "observe" and fault.line.startswith("PermissionError: [Errno 13]")


def test_readable_paths_never_hold_the_run_directory(project: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    root, run = project
    monkeypatch.syspath_prepend(str(root))
    readable = confinement.role_readable(run, run / "traffic", ["project_roles", "adversary"])
    assert root not in readable and not any(p == run or p in run.parents or run in p.parents for p in readable[1:])
    assert readable[0] == (run / "traffic").resolve()
    assert root / "project_roles.py" in readable  # the plug-in's own file, not the folder it shares with runs/


@pytest.mark.parametrize(("role", "stage", "line"), [
    ("Quits", "process", "the role's process ended during observe (exit code 3)"),
    ("WrongType", "observe", "the role returned a str, not an AttackTarget"),
])
def test_a_role_that_dies_or_answers_wrong_is_a_fault(project: tuple[Path, Path], role: str, stage: str, line: str) -> None:
    fault = _fault(project, role)
    assert (fault.stage, fault.line) == (stage, line)


def test_a_role_that_does_not_answer_is_stopped(project: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(role_process, "ANSWER_S", 3.0)
    proc = _process(project, "Sleepy")
    try:
        proc.start()
        with pytest.raises(RoleFault, match="no answer within 3 s; its process was stopped"):
            proc.observe(_event(project[1]))
        assert proc.proc.poll() is not None
    finally:
        proc.close()


def test_a_role_writing_into_the_protocol_is_stopped(project: tuple[Path, Path]) -> None:
    proc = _process(project, "Liar")
    try:
        proc.start()
        with pytest.raises(RoleFault, match="answered something that is not the protocol; it was stopped"):
            proc.observe(_event(project[1]))
    finally:
        proc.close()


@pytest.mark.parametrize("data", [
    "update", {"kind": "steal"}, {"kind": "update", "round": "1", "messages": [1], "nodes": [], "from_aggregate": False},
    {"kind": "update", "round": 1, "messages": [True], "nodes": [], "from_aggregate": False},
    {"kind": "update", "round": 1, "messages": [1], "nodes": [], "from_aggregate": 0, "client": None},
    {"kind": "decode", "round": 1, "messages": [1], "nodes": [], "from_aggregate": False, "decode": []},
    {"kind": "decode", "round": 1, "messages": [1], "nodes": [], "from_aggregate": False, "decode": ["guess"]},
    {"kind": "update", "round": 1, "messages": [1], "nodes": [], "from_aggregate": False, "decode": ["keys"]},
    {"kind": "decode", "round": 1, "messages": [1], "nodes": [], "from_aggregate": False, "decode": ["keys"], "epochs": 0},
])
def test_targets_from_the_role_process_are_checked_field_by_field(data: object) -> None:
    with pytest.raises(RoleFault, match="not an AttackTarget"):
        checked_target(data)
    ok = {"kind": "update", "round": 1, "messages": [1], "client": 7, "strategy": None, "from_aggregate": False, "nodes": []}
    assert checked_target(ok) == AttackTarget("update", 1, (1,), client=7)
    decode = {**ok, "kind": "decode", "decode": ["keyless"], "epochs": 2, "private_images": None}
    assert checked_target(decode) == AttackTarget("decode", 1, (1,), client=7, decode=("keyless",), epochs=2)


def test_without_landlock_the_run_says_the_role_is_not_confined(monkeypatch: pytest.MonkeyPatch) -> None:
    from landlock import SyscallError

    def missing() -> int:
        raise SyscallError(38, "Function not implemented", reason="Cannot find Landlock syscalls")

    monkeypatch.setattr(confinement, "landlock_abi_version", missing)
    why = confinement.landlock_unavailable()
    assert why == "the kernel has no Landlock (Cannot find Landlock syscalls)"
    assert confinement.confine([Path("/usr")]) == why
    line = Confinement(False, why).line()
    assert "NOT confined (the kernel has no Landlock" in line and "could read this run's ground truth" in line


@needs_landlock
def test_the_role_process_opens_the_log_read_only_while_it_is_written(project: tuple[Path, Path]) -> None:
    _root, run = project
    writer = TrafficWriter(run)  # a writer holds the log open, as during a run
    proc = _process(project, "Echo")
    try:
        proc.start()
        for _ in range(3):
            assert proc.observe(_event(run))
        writer.append(OutgoingRecord(round=2, direction="up", src_node=8, dst_node=0, message_type="train", flower_id="b",
                                     reply_to="i2", num_bytes=1, sha256="0", created_at=0.0,
                                     metrics={"metrics/train-loss": 2.5}, config={}, tensors={"arrays/w": np.ones(3)}))
        with TrafficLog.open(run) as log:
            event = Intercept(2, 2, "up", 8, 0, "train", log.message(2))
        assert proc.observe(event) == [AttackTarget("update", 2, (2,), client=8)]
    finally:
        proc.close()
        writer.close()
    with sqlite3.connect(run / "traffic" / "index.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 2
