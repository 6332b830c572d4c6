"""The adversary's role process: where a role's code runs, apart from everything it is scored against.

Started by :class:`adversary.role_process.RoleProcess` as ``python -P -m adversary.role_host``
(a fresh interpreter: nothing of the simulation's memory), it reads one JSON line naming the role,
its options and :class:`RoleContext`, the run's traffic folder and a scratch folder (or, to check a
config before a run, only whether the plug-in loads and takes its options); confines
itself with Landlock (:mod:`adversary.confinement`) before it imports a plug-in role; then answers
one JSON line per intercepted message with the role's targets. It opens the traffic log read-only
(``mode=ro``), is never told where the ground-truth sidecar is, and writes nothing to the run
directory: the targets it answers are all it gives, and the parent checks them before it books
them in the job book.

The protocol runs on the process's original stdin and stdout; a role's own prints go to stderr.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from adversary.confinement import confine, role_readable
from adversary.roles import AttackTarget, Intercept, Role, RoleContext, RoleError, ServerAggregate, build_role, check_role
from adversary.traffic_log import TrafficLog, TrafficView
from fl_sim.validation import exception_line

OWN_PACKAGES = ("adversary", "fl_sim")  # what this process imports lazily after it is confined


def first_line(exc: BaseException) -> str:
    if isinstance(exc, RoleError) and str(exc).strip():  # already one line naming the key
        return str(exc).strip().splitlines()[0]
    return exception_line(exc)


class _Channel:
    def __init__(self, inp: BinaryIO, out: BinaryIO) -> None:
        self.inp, self.out = inp, out

    def read(self) -> dict[str, Any] | None:
        line = self.inp.readline()
        return json.loads(line) if line else None

    def write(self, message: dict[str, Any]) -> None:
        self.out.write(json.dumps(message).encode() + b"\n")
        self.out.flush()


def _targets(found: Any) -> list[dict[str, Any]]:
    if not isinstance(found, (list, tuple)):
        raise RoleError(f"the role returned a {type(found).__name__}, not a list of AttackTarget")
    for target in found:
        if not isinstance(target, AttackTarget):
            raise RoleError(f"the role returned a {type(target).__name__}, not an AttackTarget")
    return [t.to_json() for t in found]


def _serve(role: Role, channel: _Channel, traffic: Path) -> None:
    log: TrafficLog | None = None
    while (request := channel.read()) is not None:
        stage = "observe" if "intercept" in request else "observe_aggregate"
        try:
            if stage == "observe":
                log = log or TrafficLog(traffic)
                found = role.observe(Intercept.from_json(request["intercept"]), TrafficView(log))
            else:
                observe = getattr(role, "observe_aggregate", None)
                agg = request["aggregate"]
                found = [] if observe is None else observe(ServerAggregate(int(agg["round"]), tuple(agg["nodes"]),
                                                                           int(agg["num_examples"]), str(agg["protocol"])))
            channel.write({"targets": _targets(found)})
        except Exception as exc:  # the role's code fails in any way: said once, and this process ends
            channel.write({"fault": stage, "error": first_line(exc)})
            return


def main() -> int:
    channel = _Channel(os.fdopen(os.dup(0), "rb"), os.fdopen(os.dup(1), "wb"))
    os.dup2(2, 1)  # a role's print() must not write into the protocol
    sys.stdout = sys.stderr
    hello = channel.read()
    if hello is None:
        return 0
    sys.path[:] = [p for p in hello["sys_path"] if p]
    traffic = Path(hello["traffic"]) if hello.get("traffic") else None
    scratch = Path(hello["scratch"])
    tempfile.tempdir = str(scratch)
    os.environ["TMPDIR"] = str(scratch)
    role_name = hello["role"]
    top = role_name.partition(":")[0].split(".")[0] if ":" in role_name else None
    why_not = confine(role_readable(Path(hello["run_dir"]) if hello.get("run_dir") else None, traffic, (*OWN_PACKAGES, *([top] if top else []))), scratch)
    channel.write({"confined": why_not is None, "why_not": why_not})
    context = RoleContext(secagg=bool(hello["context"]["secagg"]), placed=tuple(hello["context"]["placed"]),
                          num_partitions=int(hello["context"]["num_partitions"]))
    try:
        if hello.get("check"):  # a config's validation: the plug-in loaded and its options matched, not built
            check_role(role_name, dict(hello["options"]), context)
            channel.write({"ready": True})
            return 0
        role = build_role(role_name, dict(hello["options"]), context)
    except Exception as exc:  # a plug-in is imported and built only here, and may fail in any way
        channel.write({"fault": "built", "error": first_line(exc)})
        return 0
    channel.write({"ready": True})
    if traffic is not None:
        _serve(role, channel, traffic)
    return 0


if __name__ == "__main__":
    sys.exit(main())
