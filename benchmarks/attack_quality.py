"""Attack quality, side by side: our presets against breaching's Inverting Gradients on the same cases.

Every case fixes the data (the shipped CIFAR-10 or ImageNet sample images, at 32x32), the model
(ConvNet, or the CIFAR ResNet-18 untrained or briefly trained on the other sample images), the batch
size and the weights; each private batch gives one target gradient (labels known, no BatchNorm
statistics granted: BatchNorm in train mode). Every method attacks the same target gradients with the
same iteration budget and seed, and its reconstructions are matched one-to-one to the private images
(by LPIPS, as the evaluator does) before LPIPS, PSNR and SSIM are taken.

Methods: each name of ``VARIANTS`` is one of our presets with overrides, run through the runner
(``build_attack``); together they add the default's choices one at a time, so that each is measured;
``ours:PRESET`` runs any preset as it is; ``breaching`` runs
breaching 0.1.2's own ``invertinggradients`` config (cosine, TV 0.2 in the normalised space, signed
Adam at 0.1 with step decay, boxed, the best iterate by its objective) on the model behind our
input normalisation, with that normalisation's mean and std as its data statistics: the network,
weights and gradient are the same. ``make bench-setup`` installs breaching (bench-only).

"Iterations to reach" reads the budget grid: for each method and budget, the smallest budget at which
the other method's mean LPIPS is at least as good (``>`` the largest budget when it never is).

    .venv/bin/python benchmarks/attack_quality.py [--cases readme] [--budgets 300,1200] [--images 4]
        [--methods "default (3 priors),pixel,breaching"] [--out DIR] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn
from torch.nn import functional as F

from adversary.attacks import PRESETS, AttackInputs, ThreatModel, build_attack
from adversary.metrics import evaluate_reconstruction
from experiments._inversion import image_grid
from fl_sim.data import load_sample_images
from fl_sim.data.images import resize_images
from fl_sim.models import build_model, input_statistics

try:  # the peer, an optional bench-only dependency (make bench-setup)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import breaching
    from omegaconf import OmegaConf
except ImportError:
    breaching = None

SIDE = 32
# Our side: the preset before (pixel), then one choice at a time towards the default.
VARIANTS: dict[str, tuple[str, dict]] = {
    "pixel": ("inverting-gradients-pixel", {}),  # the data range, TV 0.01, the last iterate
    "+normalized": ("inverting-gradients-pixel", {"space": "normalized"}),
    "+tv0.4": ("inverting-gradients-pixel", {"space": "normalized", "regularizers": {"tv": {"weight": 0.4}}}),
    "+best (1 trial)": ("inverting-gradients-pixel", {"space": "normalized", "keep": "best",
                                                      "regularizers": {"tv": {"weight": 0.4}}}),
    "default (3 priors)": ("inverting-gradients", {}),
}


@dataclass(frozen=True)
class Case:
    data: str  # cifar10-sample | imagenet-sample
    model: str  # convnet | resnet18
    trained: bool
    batch: int
    images: int | None = None  # private images attacked (None: --images)
    budgets: tuple[int, ...] | None = None  # (None: --budgets)

    @property
    def label(self) -> str:
        return f"{self.data.split('-')[0]} {self.model}{' trained' if self.trained else ''} b{self.batch}"


CASE_SETS: dict[str, list[Case]] = {
    # what a test runs: one small case
    "smoke": [Case("cifar10-sample", "convnet", False, 1)],
    # the README's table, sized for this 2-core machine (a ResNet-18 iteration costs about 10 ConvNet ones)
    "readme": [Case("cifar10-sample", "convnet", False, 1, budgets=(300, 1200)), Case("cifar10-sample", "convnet", False, 4),
               Case("imagenet-sample", "convnet", False, 1), Case("imagenet-sample", "convnet", False, 4),
               Case("cifar10-sample", "resnet18", False, 1, images=2)],
    # every case the issue names: for a machine with time (or a GPU)
    "full": [Case(d, m, t, b) for d in ("cifar10-sample", "imagenet-sample") for m, t in
             (("convnet", False), ("resnet18", False), ("resnet18", True)) for b in (1, 4)],
}


def case_model(case: Case, x_other: Tensor, y_other: Tensor, num_classes: int) -> nn.Module:
    """Seeded weights; ``trained``: 60 SGD steps on sample images that are not among the targets."""
    torch.manual_seed(0)
    options = {"width": 32} if case.model == "convnet" else {}
    model = build_model(case.model, (3, SIDE, SIDE), num_classes, **options)
    if case.trained:
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        gen = torch.Generator().manual_seed(1)
        model.train()
        for _ in range(60):
            idx = torch.randint(0, len(x_other), (min(16, len(x_other)),), generator=gen)
            opt.zero_grad()
            F.cross_entropy(model(x_other[idx]), y_other[idx]).backward()
            opt.step()
    return model.train()


def target_gradient(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    names, params = zip(*model.named_parameters())
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    return {n: g.detach() for n, g in zip(names, grads)}


def run_ours(method: str, model: nn.Module, grad: dict[str, Tensor], y: Tensor, budget: int) -> Tensor:
    preset, over = VARIANTS[method] if method in VARIANTS else (method.removeprefix("ours:"), {})
    attack = build_attack(preset, {**over, "iterations": budget})
    inputs = AttackInputs(model, grad, labels=y, image_shape=(3, SIDE, SIDE), num_classes=int(model_out(model)))
    return attack.run(inputs, ThreatModel(labels="known", num_images=int(y.shape[0]))).images


def model_out(model: nn.Module) -> int:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features


def run_breaching(model: nn.Module, grad: dict[str, Tensor], y: Tensor, budget: int) -> Tensor:
    """breaching's IG on the network behind our Normalize, with its statistics: the same function of the images."""
    mean, std = input_statistics(model, 3)
    net = model.net if hasattr(model, "net") else model
    grads = [grad[n] for n, _ in model.named_parameters()]
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        cfg = breaching.get_attack_config("invertinggradients", overrides=[f"optim.max_iterations={budget}",
                                                                          "optim.callback=1000000000"])
        attacker = breaching.attacks.prepare_attack(net, nn.CrossEntropyLoss(), cfg, dict(device=torch.device("cpu"), dtype=torch.float))
        meta = OmegaConf.create(dict(shape=[3, SIDE, SIDE], modality="vision", mean=mean.flatten().tolist(), std=std.flatten().tolist()))
        payload = [dict(parameters=[p.detach() for p in net.parameters()], buffers=None, metadata=meta)]
        shared = [dict(gradients=[g.clone() for g in grads], buffers=None,
                       metadata=dict(num_data_points=int(y.shape[0]), labels=y.clone(), local_hyperparams=None))]
        out, _ = attacker.reconstruct(payload, shared, {}, dryrun=False)
    return (out["data"] * std + mean).clamp(0, 1)


def iterations_to_reach(curve: dict[int, float], goal: float, budgets: list[int]) -> str:
    for b in budgets:
        if curve.get(b, float("inf")) <= goal:
            return str(b)
    return f">{budgets[-1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", choices=sorted(CASE_SETS), default="readme")
    parser.add_argument("--budgets", default="300,1200", help="iteration budgets, e.g. 300,1200,4800")
    parser.add_argument("--images", type=int, default=4, help="private images per case (a multiple of the batch size)")
    parser.add_argument("--methods", default=",".join([*VARIANTS, "breaching"]),
                        help=f"comma-separated: {', '.join(VARIANTS)}, ours:PRESET, breaching")
    parser.add_argument("--out", default="runs/attack-quality", help="folder for the table, the figures and the grids")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in VARIANTS and m != "breaching"
               and not (m.startswith("ours:") and m.removeprefix("ours:") in PRESETS)]
    if unknown:
        parser.error(f"--methods: unknown method {unknown[0]!r}; choose from {', '.join(VARIANTS)}, breaching, "
                     f"or ours:PRESET with PRESET one of {', '.join(PRESETS)}")
    if "breaching" in methods and breaching is None:
        parser.error("--methods breaching: breaching is not installed; run make bench-setup")
    if args.threads:
        torch.set_num_threads(args.threads)
    budgets = sorted(int(b) for b in args.budgets.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    console = Console()
    rows: list[dict] = []
    for case in CASE_SETS[args.cases]:
        x_all, y_all = load_sample_images(case.data)
        x_all = resize_images(x_all, SIDE)
        num_classes = 10 if case.data.startswith("cifar") else 1000
        wanted = case.images or args.images
        n = wanted - wanted % case.batch or case.batch
        x_t, y_t = x_all[:n], y_all[:n]
        model = case_model(case, x_all[n:], y_all[n:], num_classes)
        batches = [(x_t[i : i + case.batch], y_t[i : i + case.batch]) for i in range(0, n, case.batch)]
        grads = [target_gradient(model, xb, yb) for xb, yb in batches]
        for budget in case.budgets or budgets:
            shown = [("original", x_t)]
            for method in methods:
                start = time.perf_counter()
                recon = torch.cat([
                    run_breaching(model, g, yb, budget) if method == "breaching" else
                    run_ours(method, model, g, yb, budget)
                    for g, (_, yb) in zip(grads, batches)
                ])
                seconds = time.perf_counter() - start
                scores = [evaluate_reconstruction(recon[i : i + case.batch].clamp(0, 1), x_t[i : i + case.batch])
                          for i in range(0, n, case.batch)]
                matched = torch.cat([recon[i : i + case.batch][torch.as_tensor(s["perm"])] for i, s in zip(range(0, n, case.batch), scores)])
                shown.append((method, matched))
                row = {**asdict(case), "case": case.label, "method": method, "budget": budget, "images": n,
                       "lpips": statistics.fmean(v for s in scores for v in s["lpips"]),
                       "psnr": statistics.fmean(v for s in scores for v in s["psnr"]),
                       "ssim": statistics.fmean(v for s in scores for v in s["ssim"]), "seconds": seconds}
                rows.append(row)
                console.print(f"{case.label:32s} {budget:5d} {method:34s} LPIPS {row['lpips']:.3f}  PSNR {row['psnr']:5.2f}  "
                              f"SSIM {row['ssim']:.3f}  {seconds:6.1f} s", highlight=False)
            image_grid(out / f"grid-{case.label.replace(' ', '-')}-{budget}.png", shown,
                       f"{case.label}, {budget} iterations, labels known (rows: originals, then each method, matched)")
            (out / "rows.json").write_text(json.dumps(rows, indent=1))
    # iterations each method needs to reach the other's final LPIPS (on the budget grid): ours against breaching's,
    # breaching's against our default's
    default = "default (3 priors)"
    for row in rows:
        other = default if row["method"] == "breaching" else "breaching"
        goal = next((r["lpips"] for r in rows if r["case"] == row["case"] and r["method"] == other and r["budget"] == row["budget"]), None)
        if goal is None or row["method"] == other:
            continue
        curve = {r["budget"]: r["lpips"] for r in rows if r["case"] == row["case"] and r["method"] == row["method"]}
        row["reaches the other at"] = iterations_to_reach(curve, goal, budgets)
    (out / "rows.json").write_text(json.dumps(rows, indent=1))
    table = Table(title="attack quality: mean over the private images, matched one-to-one (LPIPS lower is better)")
    reach_cols = sorted({k for r in rows for k in r if k.startswith("reaches")})
    for col in ("case", "budget", "method", "LPIPS", "PSNR", "SSIM", "s", *reach_cols):
        table.add_column(col, justify="left" if col in ("case", "method") else "right")
    lines = ["| case | budget | method | LPIPS | PSNR | SSIM | s | " + " | ".join(reach_cols) + " |",
             "| --- " * (7 + len(reach_cols)) + "|"]
    for r in rows:
        cells = [r["case"], str(r["budget"]), r["method"], f"{r['lpips']:.3f}", f"{r['psnr']:.2f}", f"{r['ssim']:.3f}",
                 f"{r['seconds']:.0f}", *(r.get(c, "") for c in reach_cols)]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    console.print(table)
    (out / "table.md").write_text("\n".join(lines) + "\n")
    console.print(f"written: {out / 'table.md'}, {out / 'rows.json'} and the grids")


if __name__ == "__main__":
    main()
