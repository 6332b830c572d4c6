"""Progress of one attack as lines: iteration, loss, time spent and left.

A terminal gets a live bar from the command line; without one (a batch job, CI, a Ray worker) an
attack of minutes would be silent. :class:`ProgressLog` writes a line at most every ``every_s``
seconds, and at the end, to ``RUN_DIR/attacks.log`` and to any ``echo`` stream (the
command line passes stderr when it is not a terminal).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

PROGRESS_LOG = "attacks.log"


class ProgressLog:
    """A progress callback ``(iteration, loss)`` that logs lines; chain ``inner`` (a live bar) after it."""

    def __init__(self, path: Path, label: str, total: int | None, *, echo: TextIO | None = None,
                 inner: Callable[[int, float], None] | None = None, every_s: float = 10.0) -> None:
        self.path, self.label, self.total, self.echo, self.inner, self.every_s = path, label, total, echo, inner, every_s
        self.start = self.last = time.monotonic()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write(f"{self.label}: started, {total if total else 'unknown'} iterations")

    def __call__(self, iteration: int, loss: float) -> None:
        now = time.monotonic()
        done = iteration + 1
        if now - self.last >= self.every_s or (self.total is not None and done >= self.total):
            self.last = now
            self._write(self.line(done, loss, now - self.start))
        if self.inner is not None:
            self.inner(iteration, loss)

    def line(self, done: int, loss: float, elapsed: float) -> str:
        text = f"{self.label}: iteration {done}" + (f"/{self.total}" if self.total else "") + f" loss {loss:.4g} {elapsed:.0f} s"
        if self.total and done < self.total:
            text += f", about {elapsed / done * (self.total - done):.0f} s left"
        return text

    def _write(self, text: str) -> None:
        stamped = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(stamped + "\n")
        if self.echo is not None:
            print(stamped, file=self.echo, flush=True)
