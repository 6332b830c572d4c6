"""Scale: a federation of 1,000 clients, 100 a round, with the tap off, on (keeping all) and sampled.

Each row is one run in a fresh process (so its peak memory is its own): the ConvNet and the
ResNet-18 on the embedded MNIST digits, FedAvg, one local step of batch 32 (``--local-steps``: more),
on the inline and the Ray engine. It prints per row: wall time per round over the clients' summed compute (rounds after
the first), peak memory of the run's whole process tree (driver, Ray and its workers): the sum of
proportional set sizes (shared pages, Ray's object store among them, split among the processes that
map them) and, beside it, the sum of resident sizes (shared pages counted once per process: an upper
bound), traffic-log bytes per
round, and those bytes over the floor for FedAvg with every upload kept: model bytes x (1 +
clients per round). The tap's own overhead is the tap-on row's wall over the tap-off row's.

    .venv/bin/python benchmarks/scale.py [--rounds 3] [--models convnet,resnet18] [--engines inline,ray]
        [--taps "off,keep all,sample 10%"] [--local-steps 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TAPS = {
    "off": ["tap.enabled=false"],
    "keep all": ["tap.enabled=true"],
    "sample 10%": ["tap.enabled=true", "tap.keep_clients=0.1"],
}


def _memory(pid: str, status: dict[str, str]) -> int:
    """A process's proportional set size: its private pages plus its share of pages it shares (Ray's object
    store is shared memory mapped by every worker that reads an object; summing RSS counts it per worker)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(status.get("VmRSS", "0 kB").split()[0]) * 1024


def _tree_memory(root: int) -> tuple[int, int]:
    """(proportional, resident) bytes of ``root`` and every process below it, each summed."""
    parents: dict[int, int] = {}
    statuses: dict[int, dict[str, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as fh:
                fields = dict(line.split(":", 1) for line in fh if ":" in line)
        except OSError:
            continue
        parents[int(entry)] = int(fields["PPid"])
        statuses[int(entry)] = fields
    pss = rss = 0
    frontier = {root}
    while frontier:
        for pid in frontier & set(statuses):
            pss += _memory(str(pid), statuses[pid])
            rss += int(statuses[pid].get("VmRSS", "0 kB").split()[0]) * 1024
        frontier = {p for p, parent in parents.items() if parent in frontier}
    return pss, rss


def _row(args: argparse.Namespace) -> None:
    """One run, in this process: prints its figures as one JSON line."""
    from adversary.traffic_log import TrafficLog
    from app.simulation import run_simulation
    from fl_sim.config import load_config

    with tempfile.TemporaryDirectory() as out:
        settings = [f"out_dir={out}", "name=scale", f"engine.name={args.engine}", "data.name=mnist-5k",
                    f"model.name={args.model}", "federation.num_clients=1000", "federation.clients_per_round=100",
                    f"federation.rounds={args.rounds}", "federation.protocol=fedavg", f"federation.local_steps={args.local_steps}",
                    "federation.batch_size=32", "eval.every=1000", "eval.mode=server", "seed=0", *TAPS[args.tap]]
        outcome = run_simulation(load_config(None, settings), quiet=True)
        rounds = [r.as_dict() for r in outcome.result.rounds]
        steady = rounds[1:] or rounds
        traffic = Path(outcome.run_dir) / "traffic"
        log_bytes = sum(p.stat().st_size for p in traffic.rglob("*") if p.is_file()) if traffic.exists() else 0
        model_bytes = 0
        if traffic.exists():
            with TrafficLog.open(outcome.run_dir) as log:
                first = next(m for m in log.messages(direction="down") if m.tensors)
                model_bytes = sum(_nbytes(t) for t in first.tensors)
        print(json.dumps({
            "wall_per_round_s": sum(r["wall_s"] - r["eval_s"] for r in steady) / len(steady),
            "compute_per_round_s": sum(r["client_compute_s"] for r in steady) / len(steady),
            "log_bytes_per_round": log_bytes / len(rounds),
            "model_bytes": model_bytes,
        }))


def _nbytes(tensor: object) -> int:
    import numpy as np

    return int(np.prod(tensor.shape, dtype=np.int64)) * np.dtype(tensor.dtype).itemsize  # type: ignore[attr-defined]


def _measure(model: str, engine: str, tap: str, rounds: int, local_steps: int = 1) -> dict:
    cmd = [sys.executable, __file__, "--row", "--model", model, "--engine", engine, "--tap", tap, "--rounds", str(rounds),
           "--local-steps", str(local_steps)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
    peak = [0, 0]

    def sample() -> None:
        while proc.poll() is None:
            pss, rss = _tree_memory(proc.pid)
            peak[0], peak[1] = max(peak[0], pss), max(peak[1], rss)
            time.sleep(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"row {model}/{engine}/{tap} failed (exit {proc.returncode})")
    figures = json.loads(out.strip().splitlines()[-1])
    figures.update(model=model, engine=engine, tap=tap, local_steps=local_steps, peak_pss_bytes=peak[0], peak_rss_bytes=peak[1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", default="convnet,resnet18")
    parser.add_argument("--engines", default="inline,ray")
    parser.add_argument("--taps", default=",".join(TAPS))
    parser.add_argument("--local-steps", type=int, default=1,
                        help="each client's local steps of batch 32 (more compute for the same bytes on the wire)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--row", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--tap", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        _row(args)
        return
    taps = args.taps.split(",")
    if unknown := sorted(set(taps) - set(TAPS)):
        parser.error(f"--taps: unknown {', '.join(unknown)}; choose from {', '.join(TAPS)}")
    from rich.console import Console
    from rich.table import Table

    rows = []
    for model in args.models.split(","):
        for engine in args.engines.split(","):
            for tap in taps:
                rows.append(_measure(model, engine, tap, args.rounds, args.local_steps))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    table = Table(title=f"1,000 clients, 100 a round, {args.rounds} rounds (FedAvg, {args.local_steps} local step(s), batch 32); "
                        f"{os.cpu_count()} CPUs")
    for col in ("model", "engine", "tap", "wall / compute", "tap on / off", "peak PSS GiB", "peak RSS sum GiB", "log MB / round",
                "log / floor"):
        table.add_column(col, justify="right")
    off = {(r["model"], r["engine"]): r["wall_per_round_s"] for r in rows if r["tap"] == "off"}
    for r in rows:
        floor = r["model_bytes"] * 101
        base = off.get((r["model"], r["engine"]))
        table.add_row(r["model"], r["engine"], r["tap"], f"{r['wall_per_round_s'] / r['compute_per_round_s']:.2f}",
                      f"{r['wall_per_round_s'] / base:.2f}" if base else "",
                      f"{r['peak_pss_bytes'] / 2**30:.2f}", f"{r['peak_rss_bytes'] / 2**30:.2f}", f"{r['log_bytes_per_round'] / 1e6:.1f}",
                      f"{r['log_bytes_per_round'] / floor:.3f}" if floor and r["tap"] != "off" else "")
    Console().print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
