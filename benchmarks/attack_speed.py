"""Attack speed: one gradient-inversion iteration against a training step, and batched attacks.

(a) Seconds per Inverting-Gradients iteration on ResNet-18 (CIFAR variant, BN in train mode) at
    each batch size: forward, backward with create_graph (the simulated client gradient), cosine
    + 0.01 TV, double backward to the images, signed Adam step with the preset's schedule, box.
    The loop is the runner's step path (``ClientSimulator``, registered ``cosine`` and ``tv``,
    ``adam-signed``'s own ``run``), timed per iteration from its ``on_step`` callback. Next to it a
    plain training step (forward, backward, SGD step) on the same batch, and the ratio
    attack / training: the project's performance figure (seconds differ between machines of one
    kind, the ratio much less; notes/stack.md).
(b) Throughput (attack-iterations per second summed over attacks) of ``--attacks`` independent
    batch-1 attacks: one after another on the runner path; one after another on the torch.func
    path (``batched_inversion`` with one attack, to separate transform overhead from batching);
    all at once with ``batched_inversion`` (vmap over attacks).

(c) With ``--peer breaching``: breaching's own Inverting Gradients loop (``breaching==0.1.2``,
    its ``invertinggradients`` config: cosine objective, TV, hard-signed Adam, step decay, box) on
    the same model, batch, thread count and device, in the same process. breaching has no
    per-iteration hook, so its seconds per iteration are the difference of two runs
    (``warmup`` and ``warmup + repeats`` iterations) over ``repeats``: a mean; ours/peer compares
    it with the mean of our timed iterations. ``make bench-setup`` installs it (``.[bench]``, then
    breaching with ``--no-deps``: its own pins would replace this project's torch).

Warm-up iterations are excluded; medians over ``--repeats`` timed iterations. On CUDA the
device is synchronised before every timestamp.

    .venv/bin/python benchmarks/attack_speed.py [--device cpu|cuda] [--repeats 5] [--warmup 2]
        [--threads 2] [--batches 1,8,16] [--attacks 16] [--peer breaching] [--profile BATCH] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import platform
import statistics
import time
import warnings

import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn
from torch.nn import functional as F

from adversary.attacks import AttackInputs, ClientSimulator, ThreatModel
from adversary.attacks.batched import batched_inversion
from adversary.attacks.objectives import OBJECTIVES
from adversary.attacks.optimizers import OPTIMIZERS
from adversary.attacks.regularizers import REGULARIZERS, RegContext
from fl_sim.data import load_sample_images
from fl_sim.models import build_model

ALPHA_TV = 0.01  # one trial of the inverting-gradients-pixel preset: the per-iteration work of any trial of the default
IMAGE_SHAPE = (3, 32, 32)  # CIFAR

try:  # the peer, an optional bench-only dependency (make bench-setup)
    with warnings.catch_warnings():  # its import uses torch.jit.script, which torch now warns about
        warnings.simplefilter("ignore", FutureWarning)
        import breaching
    from omegaconf import OmegaConf
except ImportError:
    breaching = None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class Clock:
    """perf_counter timestamps, synchronising CUDA first."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


def client_gradient(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    model.train()
    names, params = zip(*model.named_parameters())
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    return {n: g.detach() for n, g in zip(names, grads)}


def runner_attack(model: nn.Module, observed: dict[str, Tensor], y: Tensor, iterations: int, clock: Clock) -> list[float]:
    """The runner's step path for one attack (R=1): seconds of each iteration."""
    n = y.shape[0]
    device = y.device
    sim = ClientSimulator(AttackInputs(model, observed, labels=y), ThreatModel(labels="known", num_images=n))
    objective, tv = OBJECTIVES.build("cosine"), REGULARIZERS.build("tv")
    optimizer = OPTIMIZERS.build("adam-signed", lr=0.1)
    obs = {k: v for k, v in observed.items() if k in sim.names}
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((n, 3, 32, 32), generator=gen).to(device).requires_grad_(True)
    model.train()

    def closure() -> Tensor:
        loss = objective(sim(x, y, create_graph=True), obs) + ALPHA_TV * tv(x, RegContext())
        x.grad = torch.autograd.grad(loss, [x])[0]
        return loss.detach()

    stamps = [clock()]
    optimizer.run(x, [], closure, iterations, lambda it, loss: stamps.append(clock()))
    return [b - a for a, b in zip(stamps, stamps[1:])]


def training_steps(model: nn.Module, x: Tensor, y: Tensor, iterations: int, clock: Clock) -> list[float]:
    model = copy.deepcopy(model).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    times = []
    for _ in range(iterations):
        t0 = clock()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        times.append(clock() - t0)
    return times


def batched_times(model, observed, labels, iterations: int, clock: Clock, chunk_size: int | None) -> list[float]:
    """Seconds of each ``batched_inversion`` iteration (the first includes its setup)."""
    stamps = [clock()]
    batched_inversion(model, observed, labels, iterations, tv=ALPHA_TV, chunk_size=chunk_size,
                      callback=lambda it, t, o: stamps.append(clock()))
    return [b - a for a, b in zip(stamps, stamps[1:])]


def peer_seconds(model: nn.Module, observed: dict[str, Tensor], y: Tensor, warmup: int, repeats: int, clock: Clock) -> float:
    """breaching's Inverting Gradients: seconds per iteration, (T(warmup + repeats) - T(warmup)) / repeats."""
    device = y.device
    grads = [observed[n] for n, _ in model.named_parameters()]

    def run(iterations: int) -> float:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cfg = breaching.get_attack_config("invertinggradients", overrides=[f"optim.max_iterations={iterations}",
                                                                              "optim.callback=1000000000"])
            attacker = breaching.attacks.prepare_attack(model, nn.CrossEntropyLoss(), cfg, dict(device=device, dtype=torch.float))
            payload = [dict(parameters=[p.detach() for p in model.parameters()], buffers=None,
                            metadata=OmegaConf.create(dict(shape=list(IMAGE_SHAPE), modality="vision")))]
            shared = [dict(gradients=[g.clone() for g in grads], buffers=None,
                           metadata=dict(num_data_points=int(y.shape[0]), labels=y.clone(), local_hyperparams=None))]
            start = clock()
            attacker.reconstruct(payload, shared, {}, dryrun=False)
            return clock() - start

    return (run(warmup + repeats) - run(warmup)) / repeats


def profile_top(model: nn.Module, x: Tensor, y: Tensor, iterations: int, top: int, console: Console) -> list[dict]:
    """torch.profiler over ``iterations`` attack iterations (after one untimed): the ``top`` operators by
    self time, the figure behind an attack/train ratio above the goal."""
    device = y.device
    observed = client_gradient(model, x, y)
    clock = Clock(device)
    runner_attack(model, observed, y, 1, clock)
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.profiler.profile(activities=activities) as prof:
        runner_attack(model, observed, y, iterations, clock)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events) or 1.0
    rows = [{"op": e.key, "self_ms_per_it": getattr(e, key) / 1000 / iterations, "share": getattr(e, key) / total,
             "calls_per_it": e.count / iterations} for e in events[:top]]
    table = Table(title=f"profile: top {top} operators of an attack iteration, batch {y.shape[0]} (self time)")
    for col in ("operator", "ms / iteration", "share", "calls / iteration"):
        table.add_column(col, justify="left" if col == "operator" else "right")
    for r in rows:
        table.add_row(r["op"], f"{r['self_ms_per_it']:.1f}", f"{100 * r['share']:.1f} %", f"{r['calls_per_it']:.0f}")
    console.print(table)
    return rows


def median_after(times: list[float], warmup: int) -> float:
    return statistics.median(times[warmup:])


def measure(device: torch.device, batches: list[int], attacks: int, *, repeats: int = 5, warmup: int = 2,
            peer: str | None = None, chunk_size: int | None = None, console: Console | None = None) -> dict:
    """Parts (a) and (b) on ``device``: the figures as a dict, the tables printed to ``console``."""
    console = console or Console()
    clock = Clock(device)
    name = device_name(device)
    header = f"{name} ({device.type}), torch {torch.__version__}, threads={torch.get_num_threads()}"
    console.print(f"[bold]attack speed[/bold] on {header}; warm-up {warmup}, median of {repeats}")

    x, y = load_sample_images("cifar10-sample")
    need = max([*batches, attacks, 1])
    reps = -(-need // x.shape[0])
    x, y = x.repeat(reps, 1, 1, 1)[:need].to(device), y.repeat(reps)[:need].to(device)
    torch.manual_seed(0)
    model = build_model("resnet18", (3, 32, 32), 10).to(device)
    k = warmup + repeats
    out: dict = {"device": device.type, "device_name": name, "torch": torch.__version__, "threads": torch.get_num_threads(),
                 "warmup": warmup, "repeats": repeats, "per_batch": [], "batched": []}

    # (a) attack iteration vs training step
    table = Table(title=f"(a) ResNet-18 attack iteration vs training step ({name})")
    peer_cols = (f"{peer} s/it", f"ours / {peer}") if peer else ()
    for col in ("batch", "attack s/it", "train s/step", "attack / train", *peer_cols):
        table.add_column(col, justify="right")
    for b in batches:
        observed = client_gradient(model, x[:b], y[:b])
        attack = runner_attack(model, observed, y[:b], k, clock)
        train = training_steps(model, x[:b], y[:b], k, clock)
        a_s, t_s = median_after(attack, warmup), median_after(train, warmup)
        row = {"batch": b, "attack_s": a_s, "train_s": t_s, "ratio": a_s / t_s,
               "attack_samples": attack[warmup:], "train_samples": train[warmup:]}
        cells = [str(b), f"{a_s:.4f}", f"{t_s:.4f}", f"{a_s / t_s:.2f}"]
        if peer:
            p_s = peer_seconds(model, observed, y[:b], warmup, repeats, clock)
            ours_mean = statistics.fmean(attack[warmup:])
            row.update({"peer": peer, "peer_s": p_s, "ours_mean_s": ours_mean, "ours_over_peer": ours_mean / p_s})
            cells += [f"{p_s:.4f}", f"{ours_mean / p_s:.2f}"]
        table.add_row(*cells)
        out["per_batch"].append(row)
        console.print(f"  batch {b}: attack {a_s:.4f} s/it, train {t_s:.4f} s/step"
                      + (f", {peer} {row['peer_s']:.4f} s/it" if peer else ""))
    console.print(table)

    # (b) independent batch-1 attacks: sequential vs batched
    if attacks > 0:
        observed = [client_gradient(model, x[i : i + 1], y[i : i + 1]) for i in range(attacks)]
        labels = y[:attacks, None]
        rows = []
        # one after another, runner path; every row leaves out each attack's first `warmup` iterations
        seq = sum(sum(runner_attack(model, observed[i], labels[i], k, clock)[warmup:]) for i in range(attacks))
        rows.append(("sequential, runner path", seq / repeats, attacks * repeats / seq))
        # one after another, torch.func path without vmap over attacks (A = 1 each)
        func = sum(sum(batched_times(model, observed[i : i + 1], labels[i : i + 1], k, clock, None)[warmup:])
                   for i in range(attacks))
        rows.append(("sequential, torch.func A=1", func / repeats, attacks * repeats / func))
        # all at once
        bt = batched_times(model, observed, labels, k, clock, chunk_size)
        per_it = sum(bt[warmup:]) / repeats
        rows.append((f"vmap over {attacks} attacks" + (f" (chunk {chunk_size})" if chunk_size else ""),
                     per_it, attacks / per_it))
        base = rows[0][2]
        table = Table(title=f"(b) {attacks} batch-1 attacks, ResNet-18 ({name})")
        for col in ("execution", "s/step (all attacks)", "attack-it/s", "vs sequential"):
            table.add_column(col, justify="right" if col != "execution" else "left")
        for label, s, thr in rows:
            table.add_row(label, f"{s:.3f}", f"{thr:.2f}", f"{thr / base:.2f}")
            out["batched"].append({"execution": label, "attacks": attacks, "s_per_step": s, "throughput": thr, "speedup": thr / base})
        console.print(table)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5, help="timed iterations per measurement (median)")
    parser.add_argument("--warmup", type=int, default=2, help="iterations run first and not timed (>= 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--batches", default="1,8,16", help="batch sizes for part (a)")
    parser.add_argument("--attacks", type=int, default=16, help="independent batch-1 attacks for part (b); 0 skips it")
    parser.add_argument("--chunk-size", type=int, default=None, help="vmap chunk size for the batched path")
    parser.add_argument("--peer", choices=("breaching",), help="time a peer's own loop beside ours")
    parser.add_argument("--profile", type=int, metavar="BATCH", help="also profile attack iterations at this batch size")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.peer == "breaching" and breaching is None:
        parser.error("--peer breaching: breaching is not installed; run make bench-setup")
    if args.repeats < 1 or args.warmup < 1:
        parser.error("--repeats and --warmup must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    console = Console()
    out = measure(torch.device(args.device), [int(b) for b in args.batches.split(",") if b], args.attacks,
                  repeats=args.repeats, warmup=args.warmup, peer=args.peer, chunk_size=args.chunk_size, console=console)
    if args.profile:
        x, y = load_sample_images("cifar10-sample")
        reps = -(-args.profile // x.shape[0])
        device = torch.device(args.device)
        torch.manual_seed(0)
        model = build_model("resnet18", (3, 32, 32), 10).to(device)
        out["profile"] = profile_top(model, x.repeat(reps, 1, 1, 1)[: args.profile].to(device),
                                     y.repeat(reps)[: args.profile].to(device), args.repeats, 12, console)
    console.print("attack / train is the figure to compare across machines; seconds depend on the machine and its load.")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
