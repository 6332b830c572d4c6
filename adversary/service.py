"""The adversary at run time: a role deciding what to attack, and workers attacking.

Under the Ray engine the adversary is a named actor in the simulation's own Ray
runtime (``fl-sim-adversary``, no CPU reserved so Flower's client pool is sized
as before) and dispatches attacks to worker actors: one GPU each where GPUs
exist, CPU workers otherwise. A worker that dies is restarted by Ray and its
attack retried once. The simulation does not wait for attacks while it trains;
at the end of the run it waits for them (``adversary.wait``) or leaves them in
the job book as pending, for ``fl-sim attack --resume``. Under the inline
engine the same logic runs on threads. Under both, the role itself runs in a
process of its own (:mod:`adversary.role_process`), confined where the kernel
allows it, and only this module writes what it asks for into the job book.

Under Ray only the driver's node reads and writes the run directory: the job desk beside the
adversary's actor (:mod:`adversary.remote`) runs each job there and sends only its optimisation
to a worker. The run waits for the desk before Flower shuts Ray down.
"""

from __future__ import annotations

import concurrent.futures
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from adversary.decode_job import run_decode_job
from adversary.job import run_job
from adversary.jobs import JobBook
from adversary.remote import JobDesk
from adversary.role_process import Confinement, RoleFault, RoleProcess, lookup_path
from adversary.roles import AttackTarget, Intercept, RoleContext, ServerAggregate
from adversary.statement import AuditStatement
from adversary.traffic_log import TrafficLog
from fl_sim.config import AdversaryConfig
from fl_sim.devices import apply_worker_threads
from fl_sim.validation import exception_line

ACTOR_NAME = "fl-sim-adversary"


def execute_job(run_dir: str, job_id: int, audit: AuditStatement | None = None, *,
                raise_refused: tuple[type[BaseException], ...] = (), **run_options: Any) -> dict[str, Any]:
    """Claim one job of the book, run it and record its outcome (in whatever process runs it); ``audit``:
    what a command line resuming the job states (the run's own adversary states nothing). A job another
    live process holds, or one already finished, is left alone (state ``elsewhere`` or its own).

    ``raise_refused``: errors that mean the request itself is bad (a command line's config, its grants):
    the job is forgotten and the error raised, so the command can say so in one line and leave nothing.
    ``run_options`` go to :func:`run_job` (progress, warnings)."""
    apply_worker_threads()
    book = JobBook(run_dir)
    try:
        job = next((j for j in book.jobs() if j.id == job_id), None)
        if job is None:
            return {"job": job_id, "state": "missing"}
        if not book.claim(job_id):
            if job.state in ("done", "failed"):  # finished before: what it gave
                return {"job": job_id, "state": job.state, "before": True, "out_dir": job.out_dir, "metrics": job.metrics,
                        "error": (job.error or "").splitlines()[0] if job.error else None}
            return {"job": job_id, "state": "elsewhere"}
        try:
            runner = run_decode_job if job.target.kind == "decode" else run_job
            outcome = runner(run_dir, job.target, job.preset or None, attack_overrides=job.overrides, threat=job.threat, audit=audit,
                              **run_options)
        except raise_refused:
            book.discard(job_id)
            raise
        except Exception as exc:  # recorded, not raised: one bad attack must not stop the others
            book.mark(job_id, "failed", error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}")
            return {"job": job_id, "state": "failed", "error": exception_line(exc)}
        book.mark(job_id, "done", out_dir=str(outcome.out_dir), metrics=outcome.metrics)
        return {"job": job_id, "state": "done", "out_dir": str(outcome.out_dir), "metrics": outcome.metrics}
    finally:
        book.close()


ROLE_PROCESS_NOTE = "role-process"


class AdversaryCore:
    """The role's process and the job book: turns intercepts into scheduled jobs.

    The role runs in its own process (:class:`RoleProcess`), fed the intercepted messages as data;
    its targets are booked here, the only writer it has. A role that fails (its constructor,
    ``observe``, its process) is recorded in the book's faults and dropped: the run trains on,
    attacks already scheduled finish, and the run's summary names the failure. Calls come from one
    thread (the inline engine's role thread, the Ray actor's)."""

    def __init__(self, run_dir: str, config: AdversaryConfig, context: RoleContext, sys_path: list[str]) -> None:
        self.run_dir = run_dir
        self.config = config
        self.book = JobBook(run_dir)
        self.scheduled = 0
        self.confinement: Confinement | None = None
        self._log: TrafficLog | None = None
        self.role: RoleProcess | None = None
        try:
            self.role = RoleProcess(run_dir, config.role, dict(config.options), context, sys_path)
        except RoleFault as fault:
            self._fail(fault)

    def start(self) -> None:
        """Wait for the role's process to have built the role (its first call, off the training's path);
        the book notes how the process is confined."""
        role = self.role
        if role is None:
            return
        try:
            role.start()
        except RoleFault as fault:
            self._fail(fault)
        self.confinement = role.confinement
        if self.confinement is not None:
            self.book.record_note(self.config.role, ROLE_PROCESS_NOTE, self.confinement.line())

    def _fail(self, fault: RoleFault) -> None:
        self.book.record_fault(self.config.role, fault.stage, fault.line)
        if self.role is not None:
            self.role.close()
        self.role = None

    def _full(self) -> bool:
        return self.config.max_attacks is not None and self.scheduled >= self.config.max_attacks

    def on_intercept(self, event: Intercept) -> list[int]:
        if self.role is None or self._full():
            return []
        self._log = self._log or TrafficLog.open(self.run_dir)
        try:
            return self._schedule(self.role.observe(replace(event, message=self._log.message(event.log_id))))
        except RoleFault as fault:  # the role's code; the run goes on without it
            self._fail(fault)
            return []

    def on_server_aggregate(self, aggregate: ServerAggregate) -> list[int]:
        """The server's own unmasked aggregate of a round (only a malicious server's role uses it)."""
        if self.role is None or self._full():
            return []
        try:
            return self._schedule(self.role.observe_aggregate(aggregate))
        except RoleFault as fault:
            self._fail(fault)
            return []

    def _schedule(self, targets: list[AttackTarget]) -> list[int]:
        ids = []
        for target in targets:
            if self._full():
                break
            job = self.book.add(self.config.role, target, self.config.preset, dict(self.config.attack),
                                self.config.threat.chosen())
            if job is not None:
                ids.append(job)
                self.scheduled += 1
        return ids

    def close(self) -> None:
        if self.role is not None:
            self.role.close()
            self.role = None
        if self._log is not None:
            self._log.close()
            self._log = None


class ThreadAdversary:
    """Inline engine: the same core, the role fed from one thread (training does not wait for it),
    attacks on a thread pool."""

    def __init__(self, run_dir: str, config: AdversaryConfig, context: RoleContext, sys_path: list[str]) -> None:
        self.core = AdversaryCore(run_dir, config, context, sys_path)
        self.feeder = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="role")
        self.feeder.submit(self.core.start)
        self.drained = False
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=config.workers or 1, thread_name_prefix="attack")
        self.futures: list[concurrent.futures.Future] = []

    def _submit(self, jobs: list[int]) -> None:
        for job in jobs:
            self.futures.append(self.pool.submit(execute_job, self.core.run_dir, job, device=self.core.config.device))

    def on_intercept(self, event: Intercept) -> None:
        self.feeder.submit(lambda: self._submit(self.core.on_intercept(event)))

    def on_server_aggregate(self, aggregate: ServerAggregate) -> None:
        self.feeder.submit(lambda: self._submit(self.core.on_server_aggregate(aggregate)))

    def catch_up(self) -> None:
        """Wait until the role has seen every message handed to it so far (its jobs are in the book)."""
        if not self.drained:
            self.feeder.submit(lambda: None).result()

    def drain(self) -> None:
        """Wait until the role has seen every message (its jobs are in the book), then end its process."""
        if not self.drained:
            self.drained = True
            self.feeder.submit(self.core.close)
            self.feeder.shutdown(wait=True)

    def finish(self, wait: bool) -> dict[str, int]:
        self.drain()
        if wait:
            concurrent.futures.wait(self.futures)
            self.pool.shutdown(wait=True)
        else:
            for future in self.futures:
                future.cancel()
            self.pool.shutdown(wait=True, cancel_futures=True)
        return _states(self.core.run_dir)


def _states(run_dir: str) -> dict[str, int]:
    book = JobBook(run_dir)
    try:
        counts: dict[str, int] = {}
        for job in book.jobs():
            counts[job.state] = counts.get(job.state, 0) + 1
        return counts
    finally:
        book.close()


def role_process_note(run_dir: str | Path) -> str | None:
    """How the run's role process was confined, as the job book noted it (None without a role)."""
    if not JobBook.exists(run_dir):
        return None
    book = JobBook(run_dir)
    try:
        return book.notes().get(ROLE_PROCESS_NOTE)
    finally:
        book.close()


def role_faults(run_dir: str | Path) -> list[str]:
    """One line per role failure the job book records (empty when the role never failed)."""
    if not JobBook.exists(run_dir):
        return []
    book = JobBook(run_dir)
    try:
        return [f"role {role} failed ({stage}): {error}" for role, stage, error in book.faults()]
    finally:
        book.close()


@ray.remote(num_cpus=0)
class AdversaryActor:
    """The role and its job book, on the driver's node; its jobs go to the desk beside it."""

    def __init__(self, run_dir: str, config_json: str, context: RoleContext, worker_options: dict[str, Any],
                 num_workers: int, sys_path: list[str]) -> None:
        config = AdversaryConfig.model_validate_json(config_json)
        self.core = AdversaryCore(run_dir, config, context, sys_path)
        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        self.desk = JobDesk.options(scheduling_strategy=here).remote(worker_options, num_workers, execute_job)
        self.core.start()
        self.submitted = 0

    def on_intercept(self, event: Intercept) -> int:
        return self._dispatch(self.core.on_intercept(event))

    def on_server_aggregate(self, aggregate: Any) -> int:
        return self._dispatch(self.core.on_server_aggregate(aggregate))

    def _dispatch(self, jobs: list[int]) -> int:
        for job in jobs:
            ray.get(self.desk.submit.remote(self.core.run_dir, job, self.core.config.device))
            self.submitted += 1
        return self.submitted

    def catch_up(self) -> None:
        """Nothing: it returns once every call sent before it has run (an actor runs its calls in order)."""

    def worker_pids(self) -> list[int]:
        return ray.get(self.desk.worker_pids.remote())

    def kill_worker(self, index: int) -> None:
        """For fault-tolerance tests: crash a worker; Ray restarts it and retries its task."""
        ray.get(self.desk.kill_worker.remote(index))

    def drain(self) -> None:
        self.core.close()  # after every on_intercept sent before: an actor runs its calls in order

    def finish(self, wait: bool) -> list[dict[str, Any]]:
        self.core.close()
        return ray.get(self.desk.finish.remote(wait))


class RayAdversary:
    """Ray engine: a named adversary actor and a pool of attack workers."""

    def __init__(self, run_dir: str, config: AdversaryConfig, context: RoleContext, sys_path: list[str]) -> None:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        # attack workers spread over the cluster's nodes; the role and its job book stay on the driver's node
        worker_options: dict[str, Any] = {"num_cpus": config.worker_cpus, "num_gpus": 1 if gpus >= 1 else 0,
                                          "scheduling_strategy": "SPREAD"}
        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        self.run_dir = run_dir
        self.actor = AdversaryActor.options(name=ACTOR_NAME, get_if_exists=False, scheduling_strategy=here).remote(
            run_dir, config.model_dump_json(), context, worker_options, config.workers or max(1, gpus), sys_path
        )

    def on_intercept(self, event: Intercept) -> None:
        self.actor.on_intercept.remote(event)  # fire and forget: training does not wait

    def on_server_aggregate(self, aggregate: Any) -> None:
        self.actor.on_server_aggregate.remote(aggregate)

    def catch_up(self) -> None:
        ray.get(self.actor.catch_up.remote())

    def drain(self) -> None:
        ray.get(self.actor.drain.remote())

    def finish(self, wait: bool) -> dict[str, int]:
        ray.get(self.actor.finish.remote(wait))
        return _states(self.run_dir)


def start_adversary(run_dir: str | Path, config: AdversaryConfig, context: RoleContext, engine: str) -> Any:
    """The adversary for this engine (Ray actor or threads), its role started in its own process; the
    role's modules are looked up on this process's ``sys.path`` (a relative entry taken from here)."""
    sys_path = lookup_path()
    if engine == "ray":
        return RayAdversary(str(run_dir), config, context, sys_path)
    return ThreadAdversary(str(run_dir), config, context, sys_path)
