"""Attacks on a Ray cluster: the optimisation on a worker anywhere, the rest of the job on the driver's node.

An attack job reads the run directory (the job book, the traffic log, the deployment card, the
ground truth) and writes it (its outputs, the book, ``attacks.log``). On a cluster the run directory
may exist on the driver's node only, or sit on a network file system where SQLite's locks and WAL do
not hold across machines. So the :class:`JobDesk`, an actor on the driver's node, runs every job,
and only the heavy part, the prepared attack's optimisation, travels to an :class:`AttackWorker`
(one GPU each where there are GPUs) as a pickled :class:`~adversary.job.PreparedAttack`; the
reconstruction comes back, and the desk scores and writes it. The worker never opens the run
directory. Its progress comes back as calls to the desk, a few seconds apart.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import ray
from ray import cloudpickle

from adversary.job import LocalExecution, PreparedAttack, Progress
from adversary.methods import Reconstruction
from fl_sim.devices import apply_worker_threads, device_label, resolve_device

RELAY_EVERY_S = 2.0  # a worker's progress calls, at most this often (the desk's log writes every 10 s)


class _Relay:
    """A worker's progress callback: every few seconds a call to the desk; the last one comes back with the result."""

    def __init__(self, desk: Any, token: int) -> None:
        self.desk, self.token, self.sent, self.last = desk, token, 0.0, None

    def __call__(self, iteration: int, loss: float) -> None:
        self.last = (iteration, float(loss))
        now = time.monotonic()
        if now - self.sent >= RELAY_EVERY_S:
            self.sent = now
            self.desk.progress.remote(self.token, iteration, float(loss))


@ray.remote(max_restarts=1, max_task_retries=1)
class AttackWorker:
    """Runs prepared attacks' optimisations; restarted by Ray if it dies, its task retried once."""

    def optimize(self, prepared: bytes, sys_path: list[str], device: str, desk: Any,
                 token: int) -> tuple[Reconstruction, str, tuple[int, float] | None]:
        """``prepared``: a :class:`PreparedAttack` pickled by the desk, whose model's class may come from an
        audited app's folder (``sys_path``: the desk's, so it imports here as it did there)."""
        apply_worker_threads()
        sys.path.extend(p for p in sys_path if p not in sys.path)
        attack: PreparedAttack = cloudpickle.loads(prepared)
        relay = _Relay(desk, token)
        recon, ran_on = LocalExecution(device)(attack, relay)
        return recon, ran_on, relay.last

    def visible_device(self) -> str:
        """The device ``auto`` resolves to in this worker (its own GPU when it was given one)."""
        return device_label(resolve_device("auto"))

    def pid(self) -> int:
        return os.getpid()


class RemoteExecution:
    """A desk's :class:`~adversary.job.Execution`: the optimisation on ``worker``, its progress relayed to
    the job's own callback. What does not pickle (an audited app's model built in a way pickle cannot
    follow) runs here instead, on the CPU, and says so."""

    def __init__(self, worker: Any, desk: JobDeskCore, device: str) -> None:
        self.worker, self.desk, self.device = worker, desk, device

    def __call__(self, prepared: PreparedAttack, progress: Progress | None) -> tuple[Reconstruction, str]:
        try:
            blob = cloudpickle.dumps(prepared)
        except Exception as exc:  # a user's model can fail to pickle in any way
            recon, ran_on = LocalExecution("cpu")(prepared, progress)
            recon.info["executed_on_driver"] = f"the attack could not be sent to a worker ({type(exc).__name__}: {exc})"
            return recon, ran_on
        token = self.desk.listen(progress)
        try:
            recon, ran_on, last = ray.get(self.worker.optimize.remote(blob, list(sys.path), self.device, self.desk.handle,
                                                                      token))
        finally:
            self.desk.forget(token)
        if last is not None and progress is not None:
            progress(*last)
        return recon, ran_on


class JobDeskCore:
    """The desk's state: the workers (each runs one job at a time) and the progress callbacks they report to."""

    def __init__(self, handle: Any, workers: list[Any], run: Callable[..., dict[str, Any]]) -> None:
        self.handle, self.workers, self._run = handle, workers, run
        self.free: queue.Queue[Any] = queue.Queue()
        for worker in workers:
            self.free.put(worker)
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(workers), thread_name_prefix="job")
        self.futures: list[concurrent.futures.Future] = []
        self._listeners: dict[int, Progress] = {}
        self._tokens = itertools.count()
        self._lock = threading.Lock()

    def submit(self, run_dir: str, job_id: int, device: str) -> None:
        self.futures.append(self.pool.submit(self._job, run_dir, job_id, device))

    def _job(self, run_dir: str, job_id: int, device: str) -> dict[str, Any]:
        worker = self.free.get()
        try:
            return self._run(run_dir, job_id, device=device, execution=RemoteExecution(worker, self, device))
        finally:
            self.free.put(worker)

    def listen(self, progress: Progress | None) -> int:
        with self._lock:
            token = next(self._tokens)
            if progress is not None:
                self._listeners[token] = progress
            return token

    def forget(self, token: int) -> None:
        with self._lock:
            self._listeners.pop(token, None)

    def progress(self, token: int, iteration: int, loss: float) -> None:
        with self._lock:
            listener = self._listeners.get(token)
        if listener is not None:  # a late call, after its job finished, is dropped
            listener(iteration, loss)

    def finish(self, wait: bool) -> list[dict[str, Any]]:
        """Every job's result (``wait``), or none: jobs not started stay pending in the book."""
        if not wait:
            for future in self.futures:
                future.cancel()
            return []
        done = []
        for future in self.futures:
            try:
                done.append(future.result())
            except Exception as exc:  # the worker's retry failed too: the job stays as the book has it
                done.append({"state": "lost", "error": str(exc)})
        return done


@ray.remote(num_cpus=0, max_concurrency=8)
class JobDesk:
    """The desk as an actor (placed on the driver's node by whoever starts it): ``run`` is the job runner
    (:func:`adversary.service.execute_job`). Threaded, so that the workers' progress calls are heard
    while a caller waits in :meth:`finish`; callers wait for :meth:`submit`, so that it comes before."""

    def __init__(self, worker_options: dict[str, Any], num_workers: int, run: Callable[..., dict[str, Any]]) -> None:
        workers = [AttackWorker.options(**worker_options).remote() for _ in range(num_workers)]
        self.core = JobDeskCore(ray.get_runtime_context().current_actor, workers, run)

    def submit(self, run_dir: str, job_id: int, device: str = "auto") -> None:
        self.core.submit(run_dir, job_id, device)

    def progress(self, token: int, iteration: int, loss: float) -> None:
        self.core.progress(token, iteration, loss)

    def finish(self, wait: bool) -> list[dict[str, Any]]:
        return self.core.finish(wait)

    def worker_pids(self) -> list[int]:
        return ray.get([w.pid.remote() for w in self.core.workers])

    def visible_devices(self) -> list[str]:
        return ray.get([w.visible_device.remote() for w in self.core.workers])

    def kill_worker(self, index: int) -> None:
        """For fault-tolerance tests: crash a worker; Ray restarts it and retries its task."""
        ray.kill(self.core.workers[index], no_restart=False)
