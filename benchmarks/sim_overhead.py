"""Simulation overhead: wall time per round vs the clients' pure local compute.

Runs 8 clients (FedAvg, ConvNet on the embedded MNIST digits) on each engine and
prints, per round, the wall time of the training part of the round (the server's
evaluation is timed apart and left out), the sum of the clients' compute time,
and the ratio. A ratio near 1 with one worker means the framework adds little; with
several workers in parallel it can drop below 1.

    .venv/bin/python benchmarks/sim_overhead.py [--rounds 4] [--clients 8] [--local-steps 5]
"""

from __future__ import annotations

import argparse
import json
import tempfile

from rich.console import Console
from rich.table import Table

from app.simulation import run_simulation
from fl_sim.config import load_config


def measure(engine: str, args: argparse.Namespace, out_dir: str) -> list[dict]:
    cfg = load_config(
        None,
        [
            f"out_dir={out_dir}", f"name=bench-{engine}", f"engine.name={engine}",
            "data.name=mnist-5k", "model.name=convnet", f"federation.num_clients={args.clients}",
            f"federation.rounds={args.rounds}", f"federation.local_steps={args.local_steps}",
            "federation.batch_size=32", "federation.protocol=fedavg",
        ],
    )
    outcome = run_simulation(cfg)
    return [r.as_dict() for r in outcome.result.rounds]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    console = Console()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in ("inline", "ray"):
            results[engine] = measure(engine, args, tmp)
    table = Table(title=f"simulation overhead: {args.clients} clients, FedAvg, {args.local_steps} local steps")
    for col in ("engine", "round", "train wall s", "client compute s (sum)", "wall / compute", "eval s"):
        table.add_column(col, justify="right")
    for engine, rounds in results.items():
        for r in rounds:
            wall = r["wall_s"] - r["eval_s"]
            table.add_row(engine, str(r["round"]), f"{wall:.2f}", f"{r['client_compute_s']:.2f}",
                          f"{wall / r['client_compute_s']:.2f}", f"{r['eval_s']:.2f}")
        steady = rounds[1:] or rounds
        wall = sum(r["wall_s"] - r["eval_s"] for r in steady) / len(steady)
        comp = sum(r["client_compute_s"] for r in steady) / len(steady)
        table.add_row(engine, "steady", f"{wall:.2f}", f"{comp:.2f}", f"{wall / comp:.2f}", "", style="bold")
    console.print(table)
    console.print("Rounds after the first exclude start-up (Ray workers importing torch and flwr).")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
