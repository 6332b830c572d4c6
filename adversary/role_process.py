"""The adversary's side of the role process (:mod:`adversary.role_host`): start it, feed it, check it.

A role's code never runs where the simulation's state is. The adversary (a thread pool under the
inline engine, an actor under Ray) starts one fresh interpreter for the role and hands it the
intercepted messages as JSON; what comes back is checked field by field before it becomes a job
(the process may be hostile: its answers are data, never unpickled). A role that takes longer than
:data:`START_S` to start or :data:`ANSWER_S` to answer is stopped, and the run goes on without it.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, get_args

from adversary.roles import AttackTarget, Intercept, RoleContext, RoleError, ServerAggregate
from adversary.roles.base import DECODERS, TargetKind
from adversary.traffic_log import TRAFFIC_DIR

START_S = 300.0  # a fresh interpreter importing torch and the role, on a loaded machine
ANSWER_S = 300.0  # a role's answer to one message
MAX_LINE = 16 << 20
_KINDS = get_args(TargetKind)


class RoleFault(Exception):
    """The role failed at ``stage`` (built, observe, observe_aggregate, process); ``line`` says how."""

    def __init__(self, stage: str, line: str) -> None:
        super().__init__(line)
        self.stage, self.line = stage, line


@dataclass(frozen=True)
class Confinement:
    """Whether the kernel confined the role's process, and why not where it did not."""

    confined: bool
    why_not: str | None = None

    def line(self) -> str:
        if self.confined:
            return ("the role runs in its own process, confined by Landlock: it reads the traffic log (read-only) "
                    "and cannot open the ground truth, the job book or anything else in the run directory")
        return (f"the role runs in its own process but is NOT confined ({self.why_not}): a plug-in role could read this "
                "run's ground truth; use a Linux kernel with Landlock (5.13 or later) to enforce the boundary")


def _ints(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def checked_target(data: Any) -> AttackTarget:
    """An AttackTarget from the role process's JSON, every field of the type it must have."""
    def bad(why: str) -> RoleFault:
        return RoleFault("observe", f"the role's process returned a target that is not an AttackTarget ({why})")

    if not isinstance(data, dict) or data.get("kind") not in _KINDS:
        raise bad("kind")
    optional_int = (("round", data.get("round")), ("client", data.get("client")))
    for name, value in optional_int:
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise bad(name)
    if not _ints(data.get("messages")) or not _ints(data.get("nodes")):
        raise bad("messages or nodes")
    if data.get("strategy") is not None and not isinstance(data["strategy"], str):
        raise bad("strategy")
    if not isinstance(data.get("from_aggregate"), bool):
        raise bad("from_aggregate")
    decode = data.get("decode") or []
    if not isinstance(decode, list) or any(d not in DECODERS for d in decode) or (data["kind"] == "decode") != bool(decode):
        raise bad("decode")
    for name in ("epochs", "private_images"):
        value = data.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise bad(name)
    return AttackTarget(data["kind"], data["round"], tuple(data["messages"]), data["client"], data["strategy"],
                        data["from_aggregate"], tuple(data["nodes"]), tuple(decode), data.get("epochs"),
                        data.get("private_images"))


def lookup_path() -> list[str]:
    """This process's ``sys.path`` with relative entries made absolute: where a role's process looks
    for a plug-in's module (it starts in another folder)."""
    return [os.path.abspath(p) if p else os.getcwd() for p in sys.path]


def check_plugin(role: str, options: dict[str, Any], context: RoleContext) -> None:
    """Validate a ``module:Class`` role before a run without importing it here: a confined role
    process (it can write nothing, and no run exists yet) loads it, checks it subclasses Role and
    takes ``options``. Raises RoleError with the line it gives."""
    proc = RoleProcess(None, role, options, context, lookup_path(), check=True)
    try:
        proc.start()
    except RoleFault as fault:
        raise RoleError(fault.line) from None
    finally:
        proc.close()


class RoleProcess:
    """One role in its own process; every call blocks until it answers (or is stopped)."""

    def __init__(self, run_dir: str | Path | None, role: str, options: dict[str, Any], context: RoleContext,
                 sys_path: list[str], *, check: bool = False) -> None:
        """``run_dir``: the run the role attacks (None with ``check``: only load the plug-in and match
        its options)."""
        self.role = role
        self.confinement: Confinement | None = None
        self.scratch = Path(tempfile.mkdtemp(prefix="fl-sim-role-"))
        self._buffer = b""
        self.proc = subprocess.Popen([sys.executable, "-P", "-m", "adversary.role_host"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, cwd="/", close_fds=True)
        run = Path(run_dir).resolve() if run_dir is not None else None
        self._send({"role": role, "options": options, "context": asdict(context), "run_dir": run and str(run),
                    "traffic": run and str(run / TRAFFIC_DIR), "scratch": str(self.scratch), "sys_path": sys_path,
                    "check": check}, "built")

    def start(self) -> Confinement:
        """Wait until the role is built; how its process is confined. Raises RoleFault."""
        said = self._answer("built", START_S)
        self.confinement = Confinement(bool(said.get("confined")), str(said.get("why_not") or "no reason given"))
        self._answer("built", START_S)
        return self.confinement

    def observe(self, event: Intercept) -> list[AttackTarget]:
        return self._ask({"intercept": event.to_json()}, "observe")

    def observe_aggregate(self, aggregate: ServerAggregate) -> list[AttackTarget]:
        return self._ask({"aggregate": asdict(aggregate)}, "observe_aggregate")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # type: ignore[union-attr]
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def _ask(self, request: dict[str, Any], stage: str) -> list[AttackTarget]:
        self._send(request, stage)
        targets = self._answer(stage, ANSWER_S).get("targets")
        if not isinstance(targets, list):
            raise RoleFault(stage, "the role's process answered without targets")
        return [checked_target(t) for t in targets]

    def _send(self, message: dict[str, Any], stage: str) -> None:
        try:
            self.proc.stdin.write(json.dumps(message).encode() + b"\n")  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
        except (BrokenPipeError, ValueError, OSError):
            raise self._ended(stage) from None

    def _ended(self, stage: str) -> RoleFault:
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        return RoleFault("process", f"the role's process ended during {stage} (exit code {code})")

    def _answer(self, stage: str, within_s: float) -> dict[str, Any]:
        """The next line the process writes, as a JSON object; a fault it reports is raised."""
        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        deadline = time.monotonic() + within_s
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self.proc.kill()
                self.proc.wait()
                raise RoleFault(stage, f"the role gave no answer within {within_s:.0f} s; its process was stopped")
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise self._ended(stage)
            self._buffer += chunk
            if len(self._buffer) > MAX_LINE:
                self.proc.kill()
                raise RoleFault(stage, "the role's process wrote an answer over 16 MiB; it was stopped")
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            said = json.loads(line)
        except ValueError:
            said = None
        if not isinstance(said, dict):
            self.proc.kill()
            raise RoleFault(stage, "the role's process answered something that is not the protocol; it was stopped")
        if "fault" in said:
            raise RoleFault(str(said["fault"]), str(said.get("error", "")).splitlines()[0] if said.get("error") else "failed")
        return said
