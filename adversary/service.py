"""The adversary at run time: a role deciding what to attack, and workers attacking.

Under the Ray engine the adversary is a named actor in the simulation's own Ray
runtime (``fl-sim-adversary``, no CPU reserved so Flower's client pool is sized
as before) and dispatches attacks to worker actors: one GPU each where GPUs
exist, CPU workers otherwise. A worker that dies is restarted by Ray and its
attack retried once. The simulation does not wait for attacks while it trains;
at the end of the run it waits for them (``adversary.wait``) or leaves them in
the job book as pending, for ``fl-sim attack --resume``. Under the inline
engine the same logic runs on threads.

Every result is written into the run directory by the worker that computed it,
so nothing is lost when Flower shuts Ray down.
"""

from __future__ import annotations

import concurrent.futures
import os
import traceback
from pathlib import Path
from typing import Any

import ray
import torch

from adversary.job import run_job
from adversary.jobs import JobBook
from adversary.roles import AttackTarget, Intercept, Role, RoleContext, RoleError, build_role
from adversary.statement import AuditStatement
from adversary.traffic_log import TrafficLog, TrafficView
from fl_sim.config import AdversaryConfig
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
    if os.environ.get("FL_SIM_WORKER_THREADS"):
        torch.set_num_threads(int(os.environ["FL_SIM_WORKER_THREADS"]))
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
            outcome = run_job(run_dir, job.target, job.preset or None, attack_overrides=job.overrides, threat=job.threat, audit=audit,
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


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, RoleError) and str(exc).strip():  # already one line naming the key
        return str(exc).strip().splitlines()[0]
    return exception_line(exc)


class AdversaryCore:
    """The role and the job book: turns intercepts into scheduled jobs.

    A role that fails (its constructor, ``observe``) is recorded in the book's faults and dropped:
    the run trains on, attacks already scheduled finish, and the run's summary names the failure."""

    def __init__(self, run_dir: str, config: AdversaryConfig, context: RoleContext) -> None:
        self.run_dir = run_dir
        self.config = config
        self.book = JobBook(run_dir)
        self.scheduled = 0
        self.role: Role | None = None
        try:
            self.role = build_role(config.role, dict(config.options), context)
        except Exception as exc:  # a plug-in is built only here, and may fail in any way
            self._fail("built", exc)

    def _fail(self, stage: str, exc: BaseException) -> None:
        self.book.record_fault(self.config.role, stage, _first_line(exc))
        self.role = None

    def on_intercept(self, event: Intercept) -> list[int]:
        if self.role is None or (self.config.max_attacks is not None and self.scheduled >= self.config.max_attacks):
            return []
        try:
            with TrafficLog.open(self.run_dir) as log:
                targets = self.role.observe(event, TrafficView(log))
            return self._schedule(targets)
        except Exception as exc:  # the role's code; the run goes on without it
            self._fail("observe", exc)
            return []

    def on_server_aggregate(self, aggregate: Any) -> list[int]:
        """The server's own unmasked aggregate of a round (only a malicious server's role uses it)."""
        observe = getattr(self.role, "observe_aggregate", None)
        if observe is None:
            return []
        try:
            return self._schedule(observe(aggregate))
        except Exception as exc:
            self._fail("observe_aggregate", exc)
            return []

    def _schedule(self, targets: list[Any]) -> list[int]:
        ids = []
        for target in targets:
            if self.config.max_attacks is not None and self.scheduled >= self.config.max_attacks:
                break
            if not isinstance(target, AttackTarget):
                raise RoleError(f"the role returned a {type(target).__name__}, not an AttackTarget")
            job = self.book.add(self.config.role, target, self.config.preset, dict(self.config.attack),
                                self.config.threat.chosen())
            if job is not None:
                ids.append(job)
                self.scheduled += 1
        return ids


class ThreadAdversary:
    """Inline engine: the same core, attacks on a thread pool."""

    def __init__(self, run_dir: str, config: AdversaryConfig, context: RoleContext) -> None:
        self.core = AdversaryCore(run_dir, config, context)
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=config.workers or 1, thread_name_prefix="attack")
        self.futures: list[concurrent.futures.Future] = []

    def on_intercept(self, event: Intercept) -> None:
        for job in self.core.on_intercept(event):
            self.futures.append(self.pool.submit(execute_job, self.core.run_dir, job))

    def on_server_aggregate(self, aggregate: Any) -> None:
        for job in self.core.on_server_aggregate(aggregate):
            self.futures.append(self.pool.submit(execute_job, self.core.run_dir, job))

    def finish(self, wait: bool) -> dict[str, int]:
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


def role_faults(run_dir: str | Path) -> list[str]:
    """One line per role failure the job book records (empty when the role never failed)."""
    if not JobBook.exists(run_dir):
        return []
    book = JobBook(run_dir)
    try:
        return [f"role {role} failed ({stage}): {error}" for role, stage, error in book.faults()]
    finally:
        book.close()


def _ray_classes() -> tuple[Any, Any]:

    @ray.remote(max_restarts=1, max_task_retries=1)
    class AttackWorker:
        def run(self, run_dir: str, job_id: int) -> dict[str, Any]:
            return execute_job(run_dir, job_id)

        def pid(self) -> int:
            return os.getpid()

    @ray.remote(num_cpus=0)
    class AdversaryActor:
        def __init__(self, run_dir: str, config_json: str, context: RoleContext, worker_options: dict[str, Any],
                     num_workers: int) -> None:
            config = AdversaryConfig.model_validate_json(config_json)
            self.core = AdversaryCore(run_dir, config, context)
            self.workers = [AttackWorker.options(**worker_options).remote() for _ in range(num_workers)]
            self.refs: list[Any] = []
            self.next = 0

        def on_intercept(self, event: Intercept) -> int:
            return self._dispatch(self.core.on_intercept(event))

        def on_server_aggregate(self, aggregate: Any) -> int:
            return self._dispatch(self.core.on_server_aggregate(aggregate))

        def _dispatch(self, jobs: list[int]) -> int:
            for job in jobs:
                worker = self.workers[self.next % len(self.workers)]
                self.next += 1
                self.refs.append(worker.run.remote(self.core.run_dir, job))
            return len(self.refs)

        def worker_pids(self) -> list[int]:
            return ray.get([w.pid.remote() for w in self.workers])

        def kill_worker(self, index: int) -> None:
            """For fault-tolerance tests: crash a worker; Ray restarts it and retries its task."""
            ray.kill(self.workers[index], no_restart=False)

        def finish(self, wait: bool) -> list[dict[str, Any]]:
            if not wait:
                return []
            done = []
            for ref in self.refs:
                try:
                    done.append(ray.get(ref))
                except Exception as exc:  # the retry failed too: the job stays as the book has it
                    done.append({"state": "lost", "error": str(exc)})
            return done

    return AttackWorker, AdversaryActor


class RayAdversary:
    """Ray engine: a named adversary actor and a pool of attack workers."""

    def __init__(self, run_dir: str, config: AdversaryConfig, context: RoleContext) -> None:

        _, actor_cls = _ray_classes()
        gpus = int(ray.cluster_resources().get("GPU", 0))
        worker_options: dict[str, Any] = {"num_cpus": config.worker_cpus, "num_gpus": 1 if gpus >= 1 else 0}
        self.run_dir = run_dir
        self.actor = actor_cls.options(name=ACTOR_NAME, get_if_exists=False).remote(
            run_dir, config.model_dump_json(), context, worker_options, config.workers or max(1, gpus)
        )

    def on_intercept(self, event: Intercept) -> None:
        self.actor.on_intercept.remote(event)  # fire and forget: training does not wait

    def on_server_aggregate(self, aggregate: Any) -> None:
        self.actor.on_server_aggregate.remote(aggregate)

    def finish(self, wait: bool) -> dict[str, int]:
        ray.get(self.actor.finish.remote(wait))
        return _states(self.run_dir)


def start_adversary(run_dir: str | Path, config: AdversaryConfig, context: RoleContext, engine: str) -> Any:
    """The adversary for this engine (Ray actor or threads)."""
    if engine == "ray":
        return RayAdversary(str(run_dir), config, context)
    return ThreadAdversary(str(run_dir), config, context)
