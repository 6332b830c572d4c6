"""Defense overhead: a client round with each defense over one without, side by side in one process.

For each defense (the smoke Table 2's set, plus DP, vetting and SecAgg+ with 10 and 30 shares, or
those named with --defense and --secagg), the same client round (model, batch size, local steps)
runs alternately with and without it after a warm-up (clients.overhead); the median ratio over the
pairs is printed with the middle half of the pair ratios and the seconds per round. SecAgg+'s round is the
client's whole protocol round (keys, shares, training, masks, unmask reply); its cost grows with the
shares (the client's neighbours, itself included). Run it twice on a loaded machine to see the
figures hold.

    .venv/bin/python benchmarks/defense_overhead.py [--model convnet] [--data mnist-5k] [--batch-size 32]
        [--local-steps 25] [--pairs 9] [--defense '{name="gradprune",p=0.9}' ...] [--secagg 10 ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import torch
from rich.console import Console
from rich.table import Table

import app  # noqa: F401  (the app layer's start-up: the network guard)
import clients.defenses  # noqa: F401  (registers the defenses)
from clients.overhead import measure_overhead
from fl_sim.config import ConfigError, load_config

DEFAULT_DEFENSES = [
    '{name="gradprune",p=0.5}', '{name="gradprune",p=0.9}', '{name="gradprune",p=0.99}', '{name="mixup",k=4}',
    '{name="instahide",k=4}', '{name="instahide",k=4,variant="inter",public="PUBLIC"}', '{name="dp",noise_multiplier=1.0,clip=1.0}',
    '{name="vetting"}', '[{name="mixup",k=4},{name="gradprune",p=0.9}]', '[{name="instahide",k=4},{name="gradprune",p=0.9}]',
]

DEFAULT_SECAGG_SHARES = [10, 30]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="convnet")
    parser.add_argument("--data", default="mnist-5k")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--local-steps", type=int, default=25)
    parser.add_argument("--pairs", type=int, default=9)
    parser.add_argument("--defense", action="append", help="a defense table, or a list of them (a stack); repeatable")
    parser.add_argument("--secagg", action="append", type=int, metavar="SHARES",
                        help="SecAgg+ with this many clients per round, each secret in as many shares; repeatable")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    console = Console(width=200)
    rows = []
    public = "cifar100-sample" if args.data.startswith(("cifar", "imagenet")) else "fashion-mnist-sample"
    chosen = args.defense is not None or args.secagg is not None
    cases = [[f"defenses={spec if spec.startswith('[') else f'[{spec}]'}"]
             for spec in (args.defense or [] if chosen else [d.replace("PUBLIC", public) for d in DEFAULT_DEFENSES])]
    cases += [[f"federation.num_clients={n}", "federation.secagg=true", "federation.upload=delta", "secagg.clipping_range=1.0"]
              for n in (args.secagg or [] if chosen else DEFAULT_SECAGG_SHARES)]
    for case in cases:
        try:
            norm = ["model.norm=group"] if args.model == "resnet18" else []  # DP-SGD needs per-example gradients: no BN
            config = load_config(None, [f"data.name={args.data}", f"model.name={args.model}", *norm,
                                        "federation.protocol=fedavg", f"federation.batch_size={args.batch_size}",
                                        f"federation.local_steps={args.local_steps}", "engine.name=inline", *case])
            measured = measure_overhead(config, pairs=args.pairs)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        label = " + ".join([*(d.label() for d in config.defenses),
                            *([f"SecAgg+ ({config.federation.num_clients} shares)"] if config.federation.secagg else [])])
        rows.append({"defense": label, **measured.as_dict()})
        console.print(f"{label}: {measured.ratio:.2f}x", highlight=False)
    table = Table(title=f"defense overhead per client round ({args.model}, {args.data}, batch {args.batch_size}, "
                        f"{args.local_steps} local steps, median of {args.pairs} ABAB pairs, 1 torch thread; {platform.machine()}, "
                        f"{os.cpu_count()} cores, torch {torch.__version__})")
    for col in ("defense", "overhead (x, CPU)", "middle half of pair ratios", "wall ratio", "defended CPU s", "plain CPU s",
                "examples defended/plain"):
        table.add_column(col, justify="left" if col == "defense" else "right")
    for r in rows:
        table.add_row(r["defense"], f"{r['ratio']:.2f}", f"{r['q1']:.2f}\u2013{r['q3']:.2f}", f"{r['wall_ratio']:.2f}", f"{r['defended_s']:.3f}",
                      f"{r['plain_s']:.3f}",
                      f"{r['examples_defended']}/{r['examples_plain']}")
    console.print(table)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
