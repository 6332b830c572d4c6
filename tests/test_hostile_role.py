"""A hostile plug-in role, on both engines: every trick to see the answers or change the results fails.

The role runs in its own confined process (adversary.role_host). It tries what a plug-in role did
against the first version: reach the run directory through the log view's bound methods and the
stack, read the ground truth of the reply it attacks and the node-to-partition map, insert a forged
message, rewrite a reply's metrics, plant a file in ground_truth/, edit the job book, and go around
the rules through its parent's /proc entries. It reports what happened in the one channel it has
(its own failure, recorded as a role fault). A fair role that asks for the same attacks runs beside
it; the two runs' traffic, ground truth and attack results must be the same.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
from pathlib import Path

import pytest

from adversary.confinement import landlock_unavailable
from adversary.jobs import JobBook
from adversary.traffic_log import TrafficLog
from app.simulation import run_simulation

ROLES = r'''
import gc, json, os, sqlite3, sys
from pathlib import Path

from adversary.roles import AttackTarget, Role


def attempt(trick):
    try:
        found = trick()
    except Exception as exc:
        return f"blocked ({type(exc).__name__})"
    return "SUCCEEDED" if found is not False else "found nothing"


class Fair(Role):
    """Attacks every update of the rounds before the last."""

    def __init__(self, *, last, context):
        self.last, self.over = last, False

    def sees(self, event):
        return True

    def observe(self, event, log):
        if event.direction == "down" and event.round == self.last:
            self.over = True
            self.finish()
        if self.over or not (event.direction == "up" and event.message_type == "train"):
            return []
        self.first_update(event, log)
        return [AttackTarget("update", event.round, (event.log_id,), client=event.src_node)]

    def first_update(self, event, log):
        pass

    def finish(self):
        pass


class Hostile(Fair):
    tried = None

    def first_update(self, event, log):
        if self.tried is not None:
            return
        traffic = log.messages.__self__.root  # the view's bound methods lead to the log object
        run = traffic.parent
        batch = run / "ground_truth" / "batches" / f"{event.message.reply_to}.safetensors"
        rw = lambda path: sqlite3.connect(path, timeout=1)

        def frames():
            seen = [f for f in sys._current_frames().values()]
            names = {type(o).__name__ for o in gc.get_objects()}
            return bool(names & {"GroundTruth", "TrafficWriter", "JobBook", "RunConfig"}) or False

        def forge():
            with rw(traffic / "index.sqlite") as db:
                db.execute("INSERT INTO messages (round, direction, src_node, dst_node, message_type, num_bytes, sha256, "
                           "logged_at, metrics, config) VALUES (1, 'up', '1', '0', 'train', 0, 'x', 0, '{}', '{}')")

        def forge_through_the_view():
            log.messages.__self__._conn.execute("DELETE FROM messages")
            log.messages.__self__._conn.commit()

        def rewrite_metrics():
            with rw(traffic / "index.sqlite") as db:
                db.execute("UPDATE messages SET metrics = '{\"train/loss\": 0}' WHERE id = ?", (event.log_id,))

        def overwrite_tensors():
            name, offset = log.messages.__self__._conn.execute(
                "SELECT b.pack, b.offset FROM tensors t JOIN blobs b ON b.digest = t.blob WHERE t.message = ?",
                (event.log_id,)).fetchone()
            with open(traffic / name, "r+b") as fh:
                fh.seek(offset)
                fh.write(b"\0" * 8)

        def edit_job_book():
            with rw(run / "adversary" / "jobs.sqlite") as db:
                db.execute("UPDATE jobs SET metrics = '{\"lpips_avg\": 0.0}'")

        def plant(where):
            def trick():
                where.parent.mkdir(parents=True, exist_ok=True)
                where.write_text("planted")
            return trick

        self.tried = {
            "list the run directory": attempt(lambda: os.listdir(run)),
            "read the attacked reply's ground truth": attempt(lambda: batch.read_bytes()),
            "read the node-to-partition map": attempt(lambda: sqlite3.connect(
                f"file:{run}/ground_truth/index.sqlite?mode=ro", uri=True).execute("SELECT * FROM nodes").fetchall()),
            "read the run's config (its seed)": attempt(lambda: (run / "config.toml").read_text()),
            "find the simulation's objects in memory": attempt(frames),
            "read through the parent's /proc root": attempt(lambda: Path(f"/proc/{os.getppid()}/root{batch}").read_bytes()),
            "read the parent's memory": attempt(lambda: open(f"/proc/{os.getppid()}/mem", "rb").read(1)),
            "insert a forged message": attempt(forge),
            "delete messages through the view's connection": attempt(forge_through_the_view),
            "rewrite a reply's metrics": attempt(rewrite_metrics),
            "overwrite a reply's tensors": attempt(overwrite_tensors),
            "edit the job book": attempt(edit_job_book),
            "plant a file in ground_truth/": attempt(plant(run / "ground_truth" / "planted.txt")),
            "plant a file in attacks/": attempt(plant(run / "attacks" / "planted" / "metrics.json")),
        }

    def finish(self):
        raise RuntimeError("tricks: " + json.dumps(self.tried))
'''

BASE = ("data.name=cifar10-sample", "model.options={width=8}", "federation.num_clients=2", "federation.rounds=3",
        "federation.protocol=fedsgd", "federation.batch_size=1", "adversary.attack.iterations=4",
        "adversary.options={last=3}")


def _traffic(run_dir: Path) -> list[tuple]:
    """Every message's metrics (less the clients' timings) and its tensors, byte for byte (in an order
    that does not depend on which client answered first)."""
    with TrafficLog.open(run_dir) as log:
        return sorted((m.round, m.direction, m.message_type, m.src_node, m.dst_node,
                       json.dumps({k: v for k, v in m.metrics.items() if not k.endswith("compute-s")}, sort_keys=True),
                       json.dumps({k: hashlib.sha256(a.tobytes()).hexdigest() for k, a in log.arrays(m.id).items()}))
                      for m in log.messages())


def _results(run_dir: Path) -> list[tuple]:
    book = JobBook(run_dir)
    try:
        return sorted((j.target.round, j.target.client, j.state, j.metrics["lpips_avg"], json.dumps(j.metrics["verdict_counts"]))
                      for j in book.jobs())
    finally:
        book.close()


def _ground_truth(run_dir: Path) -> list[str]:
    return sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in (run_dir / "ground_truth" / "batches").iterdir())


@pytest.mark.skipif(landlock_unavailable() is not None, reason=f"no Landlock here: {landlock_unavailable()}")
@pytest.mark.parametrize("engine", ["inline", "ray"])
def test_a_hostile_role_sees_no_answer_and_changes_no_result(engine: str, tiny, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "hostile_roles.py").write_text(ROLES)
    monkeypatch.syspath_prepend(str(tmp_path))
    engine_set = ("engine.name=ray",) if engine == "ray" else ()
    fair = run_simulation(tiny(*BASE, *engine_set, "adversary.role=hostile_roles:Fair")).run_dir
    hostile = run_simulation(tiny(*BASE, *engine_set, "adversary.role=hostile_roles:Hostile")).run_dir
    summary = json.loads((hostile / "summary.json").read_text())
    assert "confined by Landlock" in summary["role_process"]
    (fault,) = summary["role_faults"]
    tried = json.loads(fault.split("RuntimeError: tricks: ", 1)[1])
    assert len(tried) == 14
    allowed = {"find the simulation's objects in memory": "found nothing"}
    for trick, outcome in tried.items():
        assert outcome == allowed.get(trick, "blocked (PermissionError)") or (
            outcome.startswith("blocked (") and "SUCCEEDED" not in outcome), (trick, outcome)
    assert _traffic(hostile) == _traffic(fair)
    assert _ground_truth(hostile) == _ground_truth(fair)
    results = _results(hostile)
    assert len(results) == 4 and results == _results(fair)  # 2 clients x rounds 1-2, the same attacks, the same scores
    assert not list(hostile.rglob("planted*"))
    with sqlite3.connect(hostile / "traffic" / "index.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    sys.modules.pop("hostile_roles", None)
