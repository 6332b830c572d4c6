"""The GPU check: everything the attack engine promises on a GPU, measured in one run, one JSON file.

Sections (each timed, each with a verdict; one failing does not stop the others):

speed     ``attack_speed.measure`` on the device: ResNet-18 attack iteration vs training step at batch
          1, 8 and 16, with breaching's loop beside ours when breaching is installed.
batched   16 batch-1 attacks at once (vmap) against 16 one after another: throughput ratio
          (goal on a GPU: 10x or more; on a CPU it is about 1, see the README).
actor     one attack through the adversary's own Ray attack worker, started with ``num_gpus=1``
          (0 on a CPU-only run): the job book's job, the worker's device, the attack's metrics.json.
parity    one short Inverting Gradients attack on a CIFAR-10 sample image, run on the CPU and on the
          device from the same seed: LPIPS on the device within ``--tolerance`` of the CPU's (the
          GPU's kernels round differently, so the iterates drift apart; the scores should not).

``--quick`` shrinks every section (a ConvNet in place of the ResNet-18 where it can, a few
iterations) so that a test runs it on a CPU in well under a minute; its figures mean nothing.

    python benchmarks/gpu_check.py [--device cuda|cpu] [--quick] [--out gpu_check.json] [--run-dir RUN]

``benchmarks/gpu_check.sh`` is the entry point on a lent machine (it installs carried wheels first).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from attack_speed import breaching, client_gradient, device_name, measure
from rich.console import Console
from rich.table import Table

from adversary.attacks import AttackInputs, ThreatModel, build_attack
from adversary.metrics.lpips_offline import lpips_distance
from fl_sim.data import load_sample_images
from fl_sim.models import build_model

BATCHED_GOAL = 10.0  # batched / sequential throughput for 16 attacks on a GPU (issue #18)


def speed_and_batched(device: torch.device, quick: bool, console: Console) -> tuple[dict, dict]:
    kw = dict(repeats=1, warmup=1) if quick else dict(repeats=5, warmup=2)
    figures = measure(device, [1] if quick else [1, 8, 16], 2 if quick else 16,
                      peer="breaching" if breaching is not None else None, console=console, **kw)
    speed = {"ok": all(r["attack_s"] > 0 for r in figures["per_batch"]), "per_batch": figures["per_batch"],
             "peer": "breaching" if breaching is not None else "skipped: breaching not installed (make bench-setup)"}
    rows = {r["execution"].split(" (")[0]: r for r in figures["batched"]}
    vmap = next(r for k, r in rows.items() if k.startswith("vmap"))
    ratio = vmap["speedup"]
    batched = {"attacks": vmap["attacks"], "batched_over_sequential": ratio, "rows": figures["batched"], "goal": BATCHED_GOAL,
               # the goal is a GPU's: a CPU has no idle units for vmap to fill
               "ok": ratio >= BATCHED_GOAL if device.type == "cuda" else ratio > 0}
    return speed, batched


def actor(device: torch.device, quick: bool, run_dir: Path | None, console: Console) -> dict:
    try:
        import ray  # optional here: its wheel is larger than one device call can carry (README)
    except ImportError:
        return {"ok": None, "skipped": "ray not installed (see the README's GPU check for carrying its wheel)"}
    from adversary.jobs import JobBook
    from adversary.observation import client_updates
    from adversary.remote import JobDesk
    from adversary.roles import AttackTarget
    from adversary.service import execute_job
    from adversary.traffic_log import TrafficLog
    from app.netguard import LOOPBACK, apply_offline_env, ray_environment

    scratch = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        if run_dir is None:
            try:
                from attack_throughput import capture  # a one-client FedSGD run of the simulation (needs flwr)
            except ImportError:
                return {"ok": None, "skipped": "no --run-dir and flwr not installed to capture one"}
            run_dir = capture(scratch / "capture", 1)
        work = scratch / "run"
        shutil.copytree(run_dir, work, ignore=shutil.ignore_patterns("attacks", "attacks.log"))
        book = JobBook(work)
        msg = client_updates(TrafficLog.open(work))[0]
        job = book.add("gpu-check", AttackTarget("update", msg.round, (msg.id,)), "inverting-gradients",
                       {"iterations": 5 if quick else 300}, {})
        book.close()
        gpus = 1 if device.type == "cuda" else 0
        apply_offline_env()
        with ray_environment():
            ray.init(_node_ip_address=LOOPBACK, include_dashboard=False, num_cpus=2, num_gpus=gpus,
                     logging_level="ERROR", log_to_driver=False,
                     runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}})
        try:
            desk = JobDesk.remote({"num_cpus": 1, "num_gpus": gpus}, 1, execute_job)
            [seen] = ray.get(desk.visible_devices.remote())
            start = time.perf_counter()
            ray.get(desk.submit.remote(str(work), job, device.type))
            [result] = ray.get(desk.finish.remote(True))
            wall = time.perf_counter() - start
        finally:
            ray.shutdown()
        metrics = result.get("metrics") or {}
        ok = result["state"] == "done" and metrics.get("device", "").startswith(device.type)
        console.print(f"  actor: worker sees {seen}; job {result['state']} on {metrics.get('device')} in {wall:.1f} s")
        return {"ok": ok, "num_gpus": gpus, "worker_device": seen, "state": result["state"], "error": result.get("error"),
                "attack_device": metrics.get("device"), "wall_s": wall, "lpips_avg": metrics.get("lpips_avg"),
                "per_iteration_s": (metrics.get("timing") or {}).get("per_iteration_s")}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def parity(device: torch.device, quick: bool, tolerance: float, console: Console) -> dict:
    x, y = load_sample_images("cifar10-sample")
    x, y = x[:1], y[:1]
    torch.manual_seed(0)
    model = build_model("convnet" if quick else "resnet18", (3, 32, 32), 10, **({"width": 8} if quick else {}))
    inputs = AttackInputs(model, client_gradient(model, x, y), labels=y, image_shape=(3, 32, 32))
    threat = ThreatModel(labels="known", num_images=1)
    iterations = 10 if quick else 200
    scores, seconds = {}, {}
    for where in ("cpu", device.type):
        if where in scores:
            continue
        attack = build_attack("inverting-gradients", {"iterations": iterations})
        start = time.perf_counter()
        result = attack.run(inputs.to(where), threat)
        seconds[where] = time.perf_counter() - start
        scores[where] = float(lpips_distance(result.images.detach().cpu().clamp(0, 1), x)[0])
    gap = abs(scores[device.type] - scores["cpu"])
    console.print(f"  parity: LPIPS cpu {scores['cpu']:.4f}, {device.type} {scores[device.type]:.4f} "
                  f"after {iterations} iterations (tolerance {tolerance})")
    return {"ok": gap <= tolerance, "iterations": iterations, "lpips_cpu": scores["cpu"], "lpips_device": scores[device.type],
            "gap": gap, "tolerance": tolerance, "seconds": seconds}


def run_section(name: str, fn: Callable[[], Any], console: Console) -> Any:
    console.print(f"[bold]{name}[/bold]")
    start = time.perf_counter()
    try:
        out = fn()
    except Exception as exc:  # a check's failure is its verdict; the others still run
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=4)}
        console.print(f"  {name} failed: {out['error']}", highlight=False)
    seconds = time.perf_counter() - start
    for part in out if isinstance(out, tuple) else (out,):
        part["seconds"] = seconds
    return out


def summary_rows(report: dict) -> list[tuple[str, str, str]]:
    s = report["sections"]
    rows = []
    for r in s["speed"].get("per_batch", []):
        peer = f", ours/{r['peer']} {r['ours_over_peer']:.2f}" if "peer" in r else ""
        rows.append(("speed", f"batch {r['batch']}: {r['attack_s']:.4f} s/it, attack/train {r['ratio']:.2f}{peer}", "ok"))
    b = s["batched"]
    if "batched_over_sequential" in b:
        rows.append(("batched", f"{b['attacks']} attacks: {b['batched_over_sequential']:.2f}x sequential (goal {b['goal']:g}x on a GPU)",
                     _verdict(b)))
    a = s["actor"]
    rows.append(("actor", a.get("skipped") or a.get("error") or
                 f"num_gpus={a['num_gpus']}, worker sees {a['worker_device']}, attack ran on {a['attack_device']}", _verdict(a)))
    p = s["parity"]
    rows.append(("parity", p.get("error") or f"LPIPS cpu {p['lpips_cpu']:.3f} vs device {p['lpips_device']:.3f} "
                 f"(gap {p['gap']:.3f} <= {p['tolerance']})", _verdict(p)))
    if "error" in s["speed"]:
        rows.insert(0, ("speed", s["speed"]["error"], "FAILED"))
    return rows


def _verdict(section: dict) -> str:
    return {True: "ok", False: "FAILED", None: "skipped"}[section.get("ok")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="a few iterations of small models: checks the script, not the GPU")
    parser.add_argument("--out", default="gpu_check.json", help="the JSON file to write")
    parser.add_argument("--run-dir", type=Path, help="a captured run for the actor section (default: capture one; needs flwr)")
    parser.add_argument("--tolerance", type=float, default=0.05, help="largest LPIPS gap between CPU and device")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: torch sees no CUDA device here; accepted: cuda on a GPU machine, or --device cpu", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    console = Console()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    t0 = time.perf_counter()
    measured = run_section("speed", lambda: speed_and_batched(device, args.quick, console), console)
    speed, batched = measured if isinstance(measured, tuple) else (measured, dict(measured))
    report = {
        "device": device.type, "device_name": device_name(device), "torch": torch.__version__, "quick": args.quick,
        "started": started, "cpu_count": os.cpu_count(),
        "sections": {
            "speed": speed, "batched": batched,
            "actor": run_section("actor", lambda: actor(device, args.quick, args.run_dir, console), console),
            "parity": run_section("parity", lambda: parity(device, args.quick, args.tolerance, console), console),
        },
    }
    report["seconds"] = time.perf_counter() - t0
    Path(args.out).write_text(json.dumps(report, indent=2))
    table = Table(title=f"GPU check on {report['device_name']} ({device.type}), {report['seconds']:.0f} s")
    for col in ("section", "figure", "verdict"):
        table.add_column(col)
    for row in summary_rows(report):
        table.add_row(*row)
    console.print(table)
    console.print(f"written: {args.out}")
    return 1 if any(s.get("ok") is False for s in report["sections"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
