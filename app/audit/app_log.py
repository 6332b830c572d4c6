"""What an audited app prints and logs, kept in its run directory; and its randomness, seeded.

An audit runs someone else's code: its output is part of the evidence (a crash, a warning, its own
round metrics), so it goes to ``RUN_DIR/app.log`` instead of being silenced: the ServerApp's and
every ClientApp call's stdout, stderr and Flower log records, each line tagged with who wrote it
(Ray workers append to the same file). Flower's own console stays quiet as before.

``--seed`` seeds ``random``, NumPy and torch in the driver before the app starts and again before
every ClientApp call, from (seed, node id, message group), so an app that seeds nothing itself draws
the same numbers in every run whichever worker process serves which client. What stays
nondeterministic: the order in which clients' replies arrive (and so the traffic log's message
ids), and anything the app reads from the clock or the operating system.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

APP_LOG = "app.log"
_FLWR = logging.getLogger("flwr")
_lock = threading.Lock()
_tags = threading.local()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def call_seed(seed: int, node_id: int, group: str) -> int:
    """The seed of one ClientApp call: the same for the same (seed, node, round) in every run."""
    digest = hashlib.sha256(f"{seed}:{node_id}:{group}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class _Lines(io.TextIOBase):
    """A text stream that appends complete, tagged lines to the app log."""

    def __init__(self, path: Path, tag: str) -> None:
        self.path, self.tag, self._partial = path, tag, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        if lines:
            _append(self.path, [f"[{self.tag}] {line}" for line in lines])
        return len(text)

    def flush(self) -> None:
        if self._partial:
            _append(self.path, [f"[{self.tag}] {self._partial}"])
            self._partial = ""


class _Records(logging.Handler):
    def __init__(self, path: Path, tag: str) -> None:
        super().__init__(logging.INFO)
        self.path, self.tag = path, tag
        self.setFormatter(logging.Formatter("%(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        tag = _tags.stack[-1] if getattr(_tags, "stack", None) else self.tag  # the innermost capture (inline clients)
        _append(self.path, [f"[{tag}] {line}" for line in self.format(record).splitlines() if line.strip()])


def _append(path: Path, lines: list[str]) -> None:
    with _lock, open(path, "a", encoding="utf-8") as fh:  # one write per batch of lines: workers append whole lines
        fh.write("".join(line.rstrip() + "\n" for line in lines))


@contextlib.contextmanager
def captured(path: Path, tag: str) -> Iterator[None]:
    """Send stdout, stderr and Flower's log records written inside the block to ``path``."""
    stream = _Lines(path, tag)
    nested = any(isinstance(h, _Records) for h in _FLWR.handlers)
    handler = None if nested else _Records(path, tag)
    level, shown = _FLWR.level, _FLWR.getEffectiveLevel()
    others = {h: h.level for h in _FLWR.handlers}
    if handler is not None:
        for h in others:  # the console shows what it showed before, no more
            h.setLevel(max(h.level, shown))
        _FLWR.addHandler(handler)
        _FLWR.setLevel(logging.INFO)
    _tags.stack = [*getattr(_tags, "stack", []), tag]
    try:
        with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
            yield
    finally:
        _tags.stack = _tags.stack[:-1]
        stream.flush()
        if handler is not None:
            _FLWR.removeHandler(handler)
            _FLWR.setLevel(level)
            for h, old in others.items():
                h.setLevel(old)
