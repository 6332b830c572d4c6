"""Attacks per hour with 1 and 2 attack workers (Ray actors), as the adversary runs them.

Captures one small FedSGD run (inline engine, tap on), then schedules the same
set of attacks into a fresh job book and lets a pool of the adversary's Ray
attack workers work through it, once with 1 worker and once with 2 (CPU: one
torch thread each; on a machine with GPUs, workers take one GPU each).

    .venv/bin/python benchmarks/attack_throughput.py [--attacks 8] [--iterations 100] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import ray
from rich.console import Console
from rich.table import Table

from adversary.jobs import JobBook
from adversary.observation import client_updates
from adversary.remote import JobDesk
from adversary.roles import AttackTarget
from adversary.service import execute_job
from adversary.traffic_log import TrafficLog
from app.engine.ray_engine import init_ray_local
from app.simulation import run_simulation
from fl_sim.config import load_config


def capture(out_dir: Path, attacks: int) -> Path:
    cfg = load_config(None, [
        f"out_dir={out_dir}", "engine.name=inline", "data.name=cifar10-sample", "model.options={width=16}",
        f"federation.num_clients={attacks}", "federation.rounds=1", "federation.protocol=fedsgd", "federation.batch_size=1",
    ])
    return run_simulation(cfg, quiet=True).run_dir


def measure(source: Path, workers: int, iterations: int, tmp: Path) -> tuple[int, float]:
    run_dir = tmp / f"workers-{workers}"
    shutil.copytree(source, run_dir)
    book = JobBook(run_dir)
    jobs = [book.add("bench", AttackTarget("update", m.round, (m.id,)), "inverting-gradients", {"iterations": iterations}, {})
            for m in client_updates(TrafficLog.open(run_dir))]
    os.environ["FL_SIM_WORKER_THREADS"] = "1"
    init_ray_local()
    try:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        desk = JobDesk.remote({"num_cpus": 1, "num_gpus": gpus}, workers, execute_job)
        ray.get(desk.worker_pids.remote())  # started, imports done
        start = time.perf_counter()
        for job in jobs:
            ray.get(desk.submit.remote(str(run_dir), job))
        results = ray.get(desk.finish.remote(True))
        wall = time.perf_counter() - start
    finally:
        ray.shutdown()
    return sum(r["state"] == "done" for r in results), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attacks", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    console = Console()
    table = Table(title=f"{args.attacks} attacks (inverting-gradients, {args.iterations} iterations, ConvNet, CIFAR-10 samples)")
    for col in ("workers", "attacks done", "wall s", "attacks / hour"):
        table.add_column(col, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        source = capture(Path(tmp) / "capture", args.attacks)
        for workers in args.workers:
            done, wall = measure(source, workers, args.iterations, Path(tmp))
            table.add_row(str(workers), str(done), f"{wall:.1f}", f"{3600 * done / wall:.0f}")
    console.print(table)


if __name__ == "__main__":
    main()
