"""Jobs are claimed before they run: concurrent resumers run each job once, a killed command-line attack
is resumed and finished attacks are not repeated."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adversary.jobs import JobBook
from adversary.roles import AttackTarget
from adversary.traffic_log import TrafficLog
from app.cli import main
from app.simulation import run_simulation
from fl_sim import processes
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]
BASE = ("federation.protocol=fedsgd", "federation.batch_size=1", "tap.enabled=true")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_simulation(tiny_config(tmp_path_factory.mktemp("runs"), *BASE)).run_dir


def _updates(run_dir: Path) -> list[int]:
    with TrafficLog.open(run_dir) as log:
        return [m.id for m in log.messages(direction="up", message_type="train")]


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_a_claim_is_taken_once_and_only_from_a_process_that_is_gone(tmp_path: Path) -> None:
    book = JobBook(tmp_path)
    ids = [book.add("cli", AttackTarget("update", None, (m,)), "dlg", {}, {}) for m in (1, 2, 3, 4, 5)]
    assert book.claim(ids[0]) and not book.claim(ids[0])  # this process holds it now: not twice, not even by itself
    # running for a process that is gone (a killed run): taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = f"{socket.gethostname()}:{int(dead.stdout)}:{12345}"
    alive_elsewhere = processes.token(os.getppid())  # the test runner's parent runs on
    other_host = f"not-{socket.gethostname()}:1:1"
    for job_id, holder in zip(ids[1:4], (gone, alive_elsewhere, other_host)):
        book._conn.execute("UPDATE jobs SET state = 'running', claimed_by = ? WHERE id = ?", (holder, job_id))
        book._conn.commit()
    assert book.claim(ids[1])
    assert not book.claim(ids[2]) and not book.claim(ids[3])  # a live process, and one that cannot be checked
    book.mark(ids[4], "done")
    assert not book.claim(ids[4])
    states = {j.id: (j.state, j.attempts) for j in book.jobs()}
    assert states[ids[1]] == ("running", 1) and states[ids[4]][0] == "done"
    book.close()


def test_an_old_book_gets_the_claim_column(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "adversary" / "jobs.sqlite"
    path.parent.mkdir()
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, key TEXT UNIQUE NOT NULL, role TEXT NOT NULL, target TEXT NOT NULL,"
                 " preset TEXT NOT NULL, overrides TEXT NOT NULL, threat TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER"
                 " NOT NULL DEFAULT 0, out_dir TEXT, metrics TEXT, error TEXT, created_at REAL NOT NULL, finished_at REAL)")
    conn.execute("INSERT INTO jobs (key, role, target, preset, overrides, threat, state, created_at) VALUES"
                 " ('k', 'eavesdropper', '{\"kind\": \"update\", \"round\": 1, \"messages\": [3]}', 'dlg', '{}', '{}', 'running', 0)")
    conn.commit()
    conn.close()
    book = JobBook(tmp_path)
    assert book.claim(1)  # running, held by nobody this code knows of: the run that wrote it is gone
    book.close()


def test_two_resumers_run_each_job_once(run_dir: Path) -> None:
    book = JobBook(run_dir)
    jobs = [book.add("eavesdropper", AttackTarget("update", None, (m,)), "huang-eq3", {"iterations": 40}, {"bn_stats": "exact"}) for m in _updates(run_dir)[:4]]
    book.close()
    first, second = _cli("attack", str(run_dir), "--resume"), _cli("attack", str(run_dir), "--resume")
    outs = [p.communicate(timeout=600) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outs
    book = JobBook(run_dir)
    ran = {j.id: (j.state, j.attempts, j.out_dir) for j in book.jobs() if j.id in jobs}
    book.close()
    assert all(state == "done" and attempts == 1 for state, attempts, _ in ran.values()), ran
    folders = {Path(out).name for _, _, out in ran.values()}
    assert len(folders) == len(jobs) and len(list((run_dir / "attacks").iterdir())) == len(jobs)


def test_a_killed_command_line_attack_is_resumed_and_not_repeated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = run_simulation(tiny_config(tmp_path, *BASE)).run_dir
    with TrafficLog.open(run_dir) as log:
        round_one = len([m for m in log.messages(direction="up", message_type="train") if m.round == 1])
    argv = ["attack", str(run_dir), "--round", "1", "--all", "--preset", "huang-eq3", "--set", "attack.iterations=80", "--set", "threat.bn_stats=exact"]
    proc = _cli(*argv)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill it once the first attack has finished
        if JobBook.exists(run_dir):
            book = JobBook(run_dir)
            done = [j for j in book.jobs() if j.state == "done"]
            book.close()
            if done:
                break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    book = JobBook(run_dir)
    states = sorted(j.state for j in book.jobs())
    book.close()
    assert "done" in states and len(states) <= round_one and set(states) <= {"done", "running", "pending"}, states

    assert main(["attack", str(run_dir), "--resume"]) == 0
    capsys.readouterr()
    book = JobBook(run_dir)
    assert [j.state for j in book.jobs()].count("done") == len(book.jobs()) == len(states)
    book.close()
    folders = set((run_dir / "attacks").iterdir())
    # the same command again: every attack of the round finished once; the killed run's missing ones now run
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("attacked before with these settings") == len(states)
    book = JobBook(run_dir)
    assert len(book.jobs()) == round_one and all(j.state == "done" for j in book.jobs())
    assert sum(j.attempts for j in book.jobs()) <= round_one + 1  # only the one killed mid-attack ran twice
    book.close()
    assert folders <= set((run_dir / "attacks").iterdir()) and len(list((run_dir / "attacks").iterdir())) == round_one


def test_a_refused_command_line_attack_leaves_no_book(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fresh = run_simulation(tiny_config(tmp_path, *BASE)).run_dir
    msg = _updates(fresh)[0]
    capsys.readouterr()
    assert main(["attack", str(fresh), "--msg", str(msg), "--set", "attack.iterations=-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "iterations" in err and len(err.splitlines()) == 1
    assert not JobBook.exists(fresh) and not (fresh / "adversary").exists()
