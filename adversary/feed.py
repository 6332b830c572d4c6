"""One line per finished attack, while the run goes on.

Attacks finish in worker actors or threads, whose own output a user never sees in order. The
job book is the one place every engine records an outcome, so :class:`JobFeed` polls it from the
driver and prints each job once when it ends: round, client, verdict, LPIPS.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adversary.jobs import Job, JobBook

Describe = Callable[[int | None], str]  # a client's node id -> how the report names it


def plain_client(node: int | None) -> str:
    return "the aggregate" if node is None else f"client {node}"


def client_namer(partition_of: dict[int, int], defenses: Callable[[int], list[str]] | None = None) -> Describe:
    """'client NODE (partition P, gradprune p=0.99)': names a simulated client for people (the
    simulation's bookkeeping, never the attacker's); ``defenses`` gives a partition's, where known."""

    def describe(node: int | None) -> str:
        if node not in partition_of:
            return plain_client(node)
        p = partition_of[node]
        if defenses is None:
            return f"client {node} (partition {p})"
        applied = defenses(p)
        return f"client {node} (partition {p}, {', '.join(applied) if applied else 'no defense'})"

    return describe


def verdict_phrase(metrics: dict[str, Any]) -> str:
    """'recognised (3 of 8 images recognised, 2 partial)' or why there is no verdict."""
    if "verdict" not in metrics:
        return "no verdict" + (f" ({metrics['verdict_note']})" if metrics.get("verdict_note") else "")
    counts = metrics.get("verdict_counts", {})
    total = sum(counts.values())
    parts = [f"{counts.get('recognised', 0)} of {total} images recognised"]
    if counts.get("partial"):
        parts.append(f"{counts['partial']} partial")
    return f"{metrics['verdict']} ({', '.join(parts)})"


def attack_line(job: Job, describe: Describe = plain_client) -> str:
    """What a finished job says in one line."""
    where = f"round {job.target.round}, {describe(job.target.client)}"
    if job.state == "failed":
        first = (job.error or "unknown error").strip().splitlines()[0]
        return f"attack {job.id} ({where}): failed: {first}"
    m = job.metrics or {}
    line = f"attack {job.id} ({where}): {verdict_phrase(m)}"
    if "lpips_avg" in m:
        line += f", LPIPS {m['lpips_avg']:.3f}"
    elif "nearest_lpips_avg" in m:
        line += f", nearest-image LPIPS {m['nearest_lpips_avg']:.3f}"
    if isinstance(m.get("timing"), dict) and "total_s" in m["timing"]:
        line += f", {m['timing']['total_s']:.0f} s"
    return line


class JobFeed:
    """Prints each job of ``run_dir``'s book once it is done or failed, and each note the adversary
    leaves there (how its role's process is confined) once it appears (a daemon thread polling the book)."""

    def __init__(self, run_dir: str | Path, emit: Callable[[str], None], describe: Describe = plain_client,
                 every_s: float = 1.0) -> None:
        self.run_dir, self.emit, self.describe, self.every_s = Path(run_dir), emit, describe, every_s
        self.reported: set[int] = set()
        self.noted: set[str] = set()
        self._polling = threading.Lock()  # the feed's thread and the run's end may poll at once
        self._stop = threading.Event()
        self._progress: tuple[Path, float, float] | None = None
        self._thread = threading.Thread(target=self._loop, name="fl-sim-job-feed", daemon=True)

    def start(self) -> JobFeed:
        self._thread.start()
        return self

    def unfinished(self) -> int:
        return len(self._jobs(("pending", "running")))

    def poll(self) -> None:
        with self._polling:
            self._poll()

    def _poll(self) -> None:
        for topic, text in self._notes().items():
            if topic not in self.noted:
                self.noted.add(topic)
                self.emit(f"adversary: {text}")
        for job in self._jobs(("done", "failed")):
            if job.id not in self.reported:
                self.reported.add(job.id)
                self.emit(attack_line(job, self.describe))

    def show_progress(self, progress_log: Path, every_s: float = 15.0) -> None:
        """From now on, also repeat the latest progress line of each unfinished attack every ``every_s``
        (while the run waits for them, a line per finish can be minutes apart)."""
        self._progress = (progress_log, every_s, time.monotonic())

    def _echo_progress(self) -> None:
        if self._progress is None:
            return
        path, every_s, last = self._progress
        if time.monotonic() - last < every_s:
            return
        self._progress = (path, every_s, time.monotonic())
        for line in running_lines(path):
            self.emit(line)

    def stop(self) -> None:
        """Stop polling and report what finished since the last poll."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.poll()

    def _jobs(self, states: tuple[str, ...]) -> list[Job]:
        return self._read(lambda book: book.jobs(states), [])

    def _notes(self) -> dict[str, str]:
        return self._read(JobBook.notes, {})

    def _read(self, query: Callable[[JobBook], Any], empty: Any) -> Any:
        if not JobBook.exists(self.run_dir):
            return empty
        book = JobBook(self.run_dir)
        try:
            return query(book)
        finally:
            book.close()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.poll()
            self._echo_progress()


def running_lines(progress_log: Path, tail_bytes: int = 64_000) -> list[str]:
    """The latest line of each attack in ``attacks.log`` that has not reached its last iteration."""
    try:
        with progress_log.open("rb") as fh:
            fh.seek(max(0, progress_log.stat().st_size - tail_bytes))
            lines = fh.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return []
    latest: dict[str, str] = {}
    for line in lines:
        _date, _time, rest = (line.split(" ", 2) + ["", ""])[:3]
        label, _, what = rest.partition(": ")
        if label:
            latest[label] = what
    out = []
    for label, what in latest.items():
        words = what.split()
        done = len(words) > 1 and words[0] == "iteration" and "/" in words[1] and len(set(words[1].split("/"))) == 1
        if not done:
            out.append(f"  {label}: {what}")
    return out
