"""Attack quality, side by side: our presets against breaching's Inverting Gradients on the same cases.

Every case fixes the data (the shipped CIFAR-10 or ImageNet sample images, at 32x32), the model
(ConvNet, or the CIFAR ResNet-18 untrained or briefly trained on the other sample images), the batch
size, the weights and the BatchNorm grant; each private batch gives one target gradient (labels known;
BatchNorm in train mode, as the client ran it). ``bn="exact"`` grants the private batch's BatchNorm
statistics: our side adds Huang et al.'s BN prior on them (``BN_EXACT``), breaching is handed them as the
user's buffers and normalises with them, its own way. Every method attacks the same target gradients with
the same iteration budget and seed, and its reconstructions are matched one-to-one to the private images
(by LPIPS, as the evaluator does) before LPIPS, PSNR and SSIM are taken. ``compute`` is what a method
computed over its budget: trial-iterations (a restart that runs in full counts once more; our default's
screened-out trials count up to the screen), so 1.5x means one and a half of breaching's runs.

Methods: each name of ``VARIANTS`` is one of our presets with overrides, run through the runner
(``build_attack``); together they add the default's choices one at a time, so that each is measured
(and take the step-size schedule and the start back one at a time); ``ours:PRESET`` runs any preset as
it is; ``breaching`` runs breaching 0.1.2's own ``invertinggradients`` config (cosine, TV 0.2 in the
normalised space, signed Adam at 0.1 with step decay, boxed, the best iterate by its objective) on the
model behind our input normalisation, with that normalisation's mean and std as its data statistics: the
network, weights and gradient are the same. ``make bench-setup`` installs breaching (bench-only).

"Reaches the other at" reads the budget grid: for each method and budget, the smallest budget at which
this method's mean LPIPS is at least as good as the other's at that budget (``>`` the largest budget when
it never is). Our default also runs at half the smallest budget, and "default in half" says, per setting
(case and budget), whether it reaches breaching's LPIPS in at most half breaching's iterations.

``--seeds N`` runs every method from N random starts (seeds 0..N-1: our attack's ``seed``, breaching's torch
seed) per batch: a row is their mean, shown with the spread of the per-seed means (where the attack recovers
nothing, which noise a start ends in moves LPIPS by more than the methods differ).

    .venv/bin/python benchmarks/attack_quality.py [--cases readme|matrix|full|smoke] [--budgets 300,1200]
        [--images 4] [--methods "default,pixel,breaching"] [--out DIR] [--threads 1] [--shard I/N] [--seeds 1]
    .venv/bin/python benchmarks/attack_quality.py --render DIR0/rows.json,DIR1/rows.json --out DIR  # shards' table
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import json
import statistics
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn
from torch.nn import functional as F

from adversary.attacks import PRESETS, AttackInputs, AttackResult, ThreatModel, build_attack, record_bn_stats
from adversary.metrics import evaluate_reconstruction
from experiments._inversion import image_grid
from fl_sim.data import load_sample_images
from fl_sim.data.images import resize_images
from fl_sim.models import build_model, input_statistics
from fl_sim.models.bn_stats import batch_statistics

try:  # the peer, an optional bench-only dependency (make bench-setup)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import breaching
    from omegaconf import OmegaConf
except ImportError:
    breaching = None

SIDE = 32
GRID_TITLE_PX = 33  # the band image_grid leaves for its title (0.3 in at 110 dpi)
TILE_H = 300  # the montage's row height in pixels
# Our side: the preset before (pixel), then one choice at a time towards the default.
VARIANTS: dict[str, tuple[str, dict]] = {
    "pixel": ("inverting-gradients-pixel", {}),  # the data range, TV 0.01, the last iterate
    "+normalized": ("inverting-gradients-pixel", {"space": "normalized"}),
    "+tv0.4": ("inverting-gradients-pixel", {"space": "normalized", "regularizers": {"tv": {"weight": 0.4}}}),
    "+best (1 trial)": ("inverting-gradients-pixel", {"space": "normalized", "keep": "best",
                                                      "regularizers": {"tv": {"weight": 0.4}}}),
    "3 priors unscreened": ("inverting-gradients", {"screen": 0.0}),
    "default": ("inverting-gradients", {}),
    # the default with one choice changed back, for the schedule and the start
    "default constant lr": ("inverting-gradients", {"optimizer": {"decay": []}}),
    "default uniform start": ("inverting-gradients", {"init": "rand"}),
    # the default with the fit ranking every trial, also where none matched the update (the default before)
    "default without unmatched": ("inverting-gradients", {"unmatched": None}),
    # TV in breaching's form (on the normalised input, zero-padded right and below), the strong trial at its 0.2
    "input TV": ("inverting-gradients", {"regularizers": {"tv": {"weight": 0.025, "space": "input", "border": True}},
                                         "prior_scales": [8.0, 1.0, 0.1]}),
    "input TV without unmatched": ("inverting-gradients", {"regularizers": {"tv": {"weight": 0.025, "space": "input", "border": True}},
                                                    "prior_scales": [8.0, 1.0, 0.1], "unmatched": None}),
    # breaching's own configuration as one trial of ours (what "input TV" keeps where nothing matched)
    "1 trial at breaching's TV": ("inverting-gradients-pixel", {"space": "normalized", "keep": "best",
                                                                "regularizers": {"tv": {"weight": 0.2, "space": "input", "border": True}}}),
}
DEFAULT = "default"
NOISE = "noise (the start)"
# What our side adds when the private batch's BatchNorm statistics are granted: the prior of Huang et al.'s
# Eq. 3 (alpha_BN 0.001) with those statistics as its target; breaching is handed them as the user's buffers,
# which its attack normalises with (its model in eval mode).
BN_EXACT = {"bn": "exact", "regularizers": {"bn_prior": {"weight": 0.001}}}


@dataclass(frozen=True)
class Case:
    data: str  # cifar10-sample | imagenet-sample
    model: str  # convnet | resnet18
    trained: bool
    batch: int
    images: int | None = None  # private images attacked (None: --images)
    budgets: tuple[int, ...] | None = None  # (None: --budgets)
    bn: str = "none"  # none | exact: the private batch's BatchNorm statistics granted (models with BatchNorm)

    @property
    def label(self) -> str:
        bn = " bn-exact" if self.bn == "exact" else ""
        return f"{self.data.split('-')[0]} {self.model}{' trained' if self.trained else ''}{bn} b{self.batch}"


CASE_SETS: dict[str, list[Case]] = {
    # what a test runs: one small case
    "smoke": [Case("cifar10-sample", "convnet", False, 1)],
    # the README's first table (one choice at a time), sized for this 2-core machine (a ResNet-18 iteration costs
    # about 10 ConvNet ones)
    "readme": [Case("cifar10-sample", "convnet", False, 1, budgets=(300, 1200)), Case("cifar10-sample", "convnet", False, 4),
               Case("imagenet-sample", "convnet", False, 1), Case("imagenet-sample", "convnet", False, 4),
               Case("cifar10-sample", "resnet18", False, 1, images=2)],
    # the README's matrix, default against breaching: every kind of case the issue names, at the budgets and image
    # counts this CPU affords in about an hour and a half on two processes (ordered by cost, so that --shard 0/2 and
    # 1/2 balance)
    "matrix": [Case("cifar10-sample", "resnet18", False, 1, images=1, budgets=(300, 1200)),
               Case("cifar10-sample", "resnet18", True, 1, images=1, budgets=(300, 1200)),
               Case("cifar10-sample", "resnet18", False, 1, images=1, budgets=(300, 1200), bn="exact"),
               Case("cifar10-sample", "resnet18", True, 1, images=1, budgets=(300, 1200), bn="exact"),
               Case("cifar10-sample", "resnet18", False, 4, images=4, budgets=(300,)),
               Case("cifar10-sample", "resnet18", False, 4, images=4, budgets=(300,), bn="exact"),
               Case("cifar10-sample", "convnet", False, 1, images=2, budgets=(300, 1200, 4800)),
               Case("imagenet-sample", "convnet", False, 1, images=2, budgets=(300, 1200, 4800)),
               Case("imagenet-sample", "resnet18", False, 1, images=1, budgets=(300,)),
               Case("imagenet-sample", "resnet18", True, 1, images=1, budgets=(300,)),
               Case("cifar10-sample", "convnet", False, 4, images=4, budgets=(300, 1200)),
               Case("imagenet-sample", "convnet", False, 4, images=4, budgets=(300, 1200))],
    # the ResNet-18 settings where the matrix's single start per method decided the row (the default above breaching,
    # or within 0.01 of it), for --seeds: several random starts per method (each set run as --shard 0/2 and 1/2)
    "resnet-seeds": [Case("cifar10-sample", "resnet18", False, 4, images=4, budgets=(300,)),
                     Case("cifar10-sample", "resnet18", True, 1, images=1, budgets=(300,)),
                     Case("cifar10-sample", "resnet18", False, 1, images=1, budgets=(300,))],
    "resnet-seeds-1200": [Case("cifar10-sample", "resnet18", False, 1, images=1, budgets=(1200,)),
                          Case("cifar10-sample", "resnet18", False, 1, images=1, budgets=(1200,), bn="exact")],
    # every case the issue names: for a machine with time (or a GPU)
    "full": [Case(d, m, t, b, bn=bn) for d in ("cifar10-sample", "imagenet-sample") for m, t in
             (("convnet", False), ("resnet18", False), ("resnet18", True)) for b in (1, 4)
             for bn in (("none", "exact") if m == "resnet18" else ("none",))],
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


def run_ours(method: str, model: nn.Module, grad: dict[str, Tensor], y: Tensor, budget: int,
             bn_exact: list[tuple[Tensor, Tensor]] | None = None, seed: int = 0) -> AttackResult:
    """Our attack's result: its images, every trial's, and the trial-iterations it computed (``timing``)."""
    preset, over = VARIANTS[method] if method in VARIANTS else (method.removeprefix("ours:"), {})
    over = {**over, "iterations": budget, "seed": seed}
    if bn_exact is not None:
        over = {**over, **BN_EXACT, "regularizers": {**over.get("regularizers", {}), **BN_EXACT["regularizers"]}}
    attack = build_attack(preset, over)
    inputs = AttackInputs(model, grad, labels=y, image_shape=(3, SIDE, SIDE), num_classes=int(model_out(model)),
                          bn_exact=bn_exact)
    threat = ThreatModel(labels="known", bn_stats="exact" if bn_exact is not None else "none", num_images=int(y.shape[0]))
    return attack.run(inputs, threat)


def trial_records(result: AttackResult, x_private: Tensor, seed: int, batch: int) -> list[dict]:
    """Every trial our attack ended with (a screened-out one as the screen left it): its prior, objective and loss (what
    the ranking saw), whether it was picked, and its LPIPS, which the attack never sees: the best trial by LPIPS is an
    oracle's pick, the bound on what a better ranking could gain."""
    scales = result.config["prior_scales"]
    return [{"seed": seed, "batch": batch, "trial": j, "prior_scale": scales[j % len(scales)], "objective": result.trial_objectives[j],
             "loss": result.trial_losses[j], "picked": j == result.best_trial,
             "lpips": evaluate_reconstruction(result.all_images[j].clamp(0, 1), x_private)["lpips_avg"]}
            for j in range(len(result.trial_objectives))]


def model_out(model: nn.Module) -> int:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features


def exact_buffers(net: nn.Module, x: Tensor) -> list[Tensor]:
    """The network's buffers holding the private batch's statistics (mean, biased variance: what a train-mode forward
    normalised with), in ``net.buffers()`` order, as breaching takes a user's buffers."""
    probe = copy.deepcopy(net).train()
    with torch.no_grad(), batch_statistics(probe) as layers:
        probe(x)
    stats = {name: (mean, var) for name, mean, var in layers}
    out = []
    for name, buf in net.named_buffers():
        module, _, kind = name.rpartition(".")
        out.append({"running_mean": stats[module][0], "running_var": stats[module][1]}.get(kind, buf).clone())
    return out


def run_breaching(model: nn.Module, grad: dict[str, Tensor], y: Tensor, budget: int, x_private: Tensor | None = None,
                  seed: int = 0) -> Tensor:
    """breaching's IG on the network behind our Normalize, with its statistics: the same function of the images.
    ``x_private`` given: the user hands its batch's BatchNorm statistics over as buffers (the bn-exact grant)."""
    mean, std = input_statistics(model, 3)
    net = model.net if hasattr(model, "net") else model
    grads = [grad[n] for n, _ in model.named_parameters()]
    buffers = None if x_private is None else exact_buffers(net, (x_private - mean) / std)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        cfg = breaching.get_attack_config("invertinggradients", overrides=[f"optim.max_iterations={budget}",
                                                                          "optim.callback=1000000000"])
        attacker = breaching.attacks.prepare_attack(net, nn.CrossEntropyLoss(), cfg, {"device": torch.device("cpu"), "dtype": torch.float})
        meta = OmegaConf.create({"shape": [3, SIDE, SIDE], "modality": "vision", "mean": mean.flatten().tolist(),
                                 "std": std.flatten().tolist()})
        payload = [{"parameters": [p.detach() for p in net.parameters()], "buffers": None, "metadata": meta}]
        shared = [{"gradients": [g.clone() for g in grads], "buffers": buffers,
                   "metadata": {"num_data_points": int(y.shape[0]), "labels": y.clone(), "local_hyperparams": None}}]
        out, _ = attacker.reconstruct(payload, shared, {}, dryrun=False)
    return (out["data"] * std + mean).clamp(0, 1)


def iterations_to_reach(curve: dict[int, float], goal: float) -> int | None:
    """The smallest budget on ``curve`` whose LPIPS is at least as good as ``goal`` (None: none is)."""
    return next((b for b in sorted(curve) if curve[b] <= goal), None)


def add_reach(rows: list[dict]) -> None:
    """Per row, the budget at which the other side first reaches this row's LPIPS (ours: breaching's; breaching: our
    default's), and for breaching's rows whether our default gets there in at most half its iterations."""
    for row in rows:
        if row["method"] == NOISE:
            continue
        other = DEFAULT if row["method"] == "breaching" else "breaching"
        goal = next((r["lpips"] for r in rows if r["case"] == row["case"] and r["method"] == other and r["budget"] == row["budget"]), None)
        if goal is None or row["method"] == other:
            continue
        curve = {r["budget"]: r["lpips"] for r in rows if r["case"] == row["case"] and r["method"] == row["method"]}
        reach = iterations_to_reach(curve, goal)
        row["reaches the other at"] = str(reach) if reach is not None else f">{max(curve)}"
        if row["method"] == "breaching":
            ours = {r["budget"]: r["lpips"] for r in rows if r["case"] == row["case"] and r["method"] == DEFAULT}
            reach = iterations_to_reach(ours, row["lpips"])
            row["default in half"] = "yes" if reach is not None and 2 * reach <= row["budget"] else "no"


def montage(rows: list[dict], sources: list[Path], out: Path, per_row: int = 6) -> Path | None:
    """Every case's grid at its largest budget in one picture, each under its own label (the grids' titles, written for
    wider figures, are cut off): the README's figure."""
    tiles = []
    for case in sorted({r["case"] for r in rows}):
        budget = max(r["budget"] for r in rows if r["case"] == case)
        if budget == 0:
            continue
        name = f"grid-{case.replace(' ', '-')}-{budget}.png"
        found = next((d / name for d in sources if (d / name).is_file()), None)
        if found is None:
            continue
        with Image.open(found) as grid:
            tile = grid.convert("RGB").crop((0, GRID_TITLE_PX, grid.width, grid.height))
        tiles.append((f"{case}\n{budget} iterations", tile.resize((round(tile.width * TILE_H / tile.height), TILE_H))))
    if not tiles:
        return None
    font = ImageFont.load_default(size=13)
    lines = [tiles[i : i + per_row] for i in range(0, len(tiles), per_row)]
    width = max(sum(t.width + 8 for _, t in line) for line in lines)
    sheet = Image.new("RGB", (width, len(lines) * (TILE_H + 40)), "white")
    draw = ImageDraw.Draw(sheet)
    for y, line in enumerate(lines):
        x = 0
        for label, tile in line:
            draw.multiline_text((x + 4, y * (TILE_H + 40) + 4), label, fill="black", font=font)
            sheet.paste(tile, (x, y * (TILE_H + 40) + 38))
            x += tile.width + 8
    path = out / "grids.png"
    sheet.save(path)
    return path


def lpips_cell(row: dict) -> str:
    """Mean LPIPS, with the spread over seeds where the row ran several."""
    return f"{row['lpips']:.3f}" + (f" ± {row['lpips_sd']:.3f}" if "lpips_sd" in row else "")


def side_by_side(rows: list[dict]) -> list[str]:
    """The README's table: per case and budget, our default beside breaching (LPIPS / PSNR), the start's LPIPS, what the
    default computed, and whether it reached breaching's LPIPS in at most half the iterations."""
    def cell(case: str, method: str, budget: int) -> str:
        r = next((r for r in rows if r["case"] == case and r["method"] == method and r["budget"] == budget), None)
        return "" if r is None else f"{lpips_cell(r)} / {r['psnr']:.1f}"

    out = ["| case | budget | default | breaching | start (noise) | default's compute | default reaches breaching at | in half |",
           "| --- " * 8 + "|"]
    for r in sorted((r for r in rows if r["method"] == "breaching"), key=lambda r: (r["case"], r["budget"])):
        ours = next((o for o in rows if o["case"] == r["case"] and o["method"] == DEFAULT and o["budget"] == r["budget"]), None)
        curve = {o["budget"]: o["lpips"] for o in rows if o["case"] == r["case"] and o["method"] == DEFAULT}
        reach = iterations_to_reach(curve, r["lpips"])
        compute = f"{ours['compute']:.2f}x" if ours else ""
        reached = str(reach) if reach is not None else f">{max(curve, default=0)}"
        start = cell(r["case"], NOISE, 0).split(" /")[0]
        out.append(f"| {r['case']} | {r['budget']} | {cell(r['case'], DEFAULT, r['budget'])} | {cell(r['case'], 'breaching', r['budget'])} "
                   f"| {start} | {compute} | {reached} | {r.get('default in half', '')} |")
    return out


def case_images(case: Case, wanted: int) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """The case's private images and labels (``wanted`` rounded down to whole batches, at least one), the rest of the
    sample images (what the trained model learns from) and the class count."""
    x_all, y_all = load_sample_images(case.data)
    x_all = resize_images(x_all, SIDE)
    n = wanted - wanted % case.batch or case.batch
    return x_all[:n], y_all[:n], x_all[n:], y_all[n:], 10 if case.data.startswith("cifar") else 1000


def mean_scores(scores: list[dict]) -> dict[str, float]:
    """Mean LPIPS, PSNR and SSIM over every image of every batch's (matched) scores."""
    return {k: statistics.fmean(v for s in scores for v in s[k]) for k in ("lpips", "psnr", "ssim")}


def noise_row(case: Case, wanted: int) -> dict:
    """The score of our attack's own start (mean + std * N(0, 1) per channel, seed 0) against the case's private images:
    a content-free reference, so that a method scoring near it reads as having recovered nothing."""
    x_t, _, _, _, num_classes = case_images(case, wanted)
    mean, std = input_statistics(build_model(case.model, (3, SIDE, SIDE), num_classes), 3)
    start = (mean + std * torch.randn(x_t.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    scores = [evaluate_reconstruction(start[i : i + case.batch], x_t[i : i + case.batch]) for i in range(0, len(x_t), case.batch)]
    return {**asdict(case), "case": case.label, "method": NOISE, "budget": 0, "images": len(x_t), **mean_scores(scores),
            "compute": 0.0, "seconds": 0.0}


def render(rows: list[dict], out: Path, console: Console, sources: list[Path] | None = None) -> None:
    fields = {f.name for f in dataclasses.fields(Case)}
    for label in sorted({r["case"] for r in rows} - {r["case"] for r in rows if r["method"] == NOISE}):
        first = next(r for r in rows if r["case"] == label)
        if not {"data", "model", "trained", "batch"} <= first.keys():  # rows that do not say what their case was
            continue
        case = Case(**{k: tuple(v) if isinstance(v, list) else v for k, v in first.items() if k in fields})
        rows.append(noise_row(case, int(first["images"])))
    add_reach(rows)
    (out / "rows.json").write_text(json.dumps(rows, indent=1))
    table = Table(title="attack quality: mean over the private images, matched one-to-one (LPIPS lower is better)")
    extra = [c for c in ("reaches the other at", "default in half") if any(c in r for r in rows)]
    oracle = ["best trial (oracle)"] if any("oracle_lpips" in r for r in rows) else []
    cols = ("case", "budget", "method", "LPIPS", *oracle, "PSNR", "SSIM", "compute", "s", *extra)
    for col in cols:
        table.add_column(col, justify="left" if col in ("case", "method") else "right")
    lines = ["| " + " | ".join(cols) + " |", "| --- " * len(cols) + "|"]
    for r in sorted(rows, key=lambda r: (r["case"], r["budget"])):
        start = r["method"] == NOISE
        cells = [r["case"], "start" if start else str(r["budget"]), r["method"], lpips_cell(r),
                 *([f"{r['oracle_lpips']:.3f}" if "oracle_lpips" in r else ""] if oracle else []), f"{r['psnr']:.2f}",
                 f"{r['ssim']:.3f}", "" if start else f"{r['compute']:.2f}x", "" if start else f"{r['seconds']:.0f}",
                 *(r.get(c, "") for c in extra)]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    console.print(table)
    settings = [r for r in rows if "default in half" in r]
    if settings:
        half = sum(r["default in half"] == "yes" for r in settings)
        worse = [r for r in rows if r["method"] == DEFAULT and any(
            b["method"] == "breaching" and b["case"] == r["case"] and b["budget"] == r["budget"] and b["lpips"] < r["lpips"]
            for b in rows)]
        above = "; ".join(f"{r['case']} {r['budget']}" for r in worse)
        summary = (f"default at or below breaching's LPIPS in {len(settings) - len(worse)} of {len(settings)} settings"
                   f"{f' (above in: {above})' if worse else ''}; "
                   f"reaches breaching's final LPIPS in at most half its iterations in {half} of {len(settings)}")
        console.print(summary)
        lines += ["", summary]
    lines += ["", *side_by_side(rows)]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    sheet = montage(rows, sources or [out], out)
    console.print(f"written: {out / 'table.md'}, {out / 'rows.json'}, the grids{f' and {sheet}' if sheet else ''}")


def measure(case: Case, methods: list[str], budgets: list[int], images: int, out: Path, console: Console,
            seeds: int = 1) -> list[dict]:
    """Every method on one case at every budget (our default also at half the smallest, for the half-iterations
    reading); rows of mean LPIPS, PSNR, SSIM, compute (trial-iterations over the budget) and seconds per run.
    ``seeds`` > 1: every method runs from that many random starts (seeds 0, 1, ...) on every batch; the row averages
    them and ``lpips_sd`` is the spread of the per-seed means, what one start alone may be off by."""
    x_t, y_t, x_rest, y_rest, num_classes = case_images(case, case.images or images)
    n = len(x_t)
    model = case_model(case, x_rest, y_rest, num_classes)
    batches = [(x_t[i : i + case.batch], y_t[i : i + case.batch]) for i in range(0, n, case.batch)]
    grads = [target_gradient(model, xb, yb) for xb, yb in batches]
    exact = [record_bn_stats(model, xb) if case.bn == "exact" else None for xb, _ in batches]
    budgets = list(case.budgets or budgets)
    rows: list[dict] = []
    for budget in sorted({*budgets, *([min(budgets) // 2] if DEFAULT in methods else [])}):
        shown = [("original", x_t)]
        for method in methods if budget in budgets else [DEFAULT]:
            start = time.perf_counter()
            per_seed, spent, trials = [], 0, []
            for seed in range(seeds):
                recon = []
                for b, (g, (xb, yb), bn) in enumerate(zip(grads, batches, exact)):
                    if method == "breaching":
                        recon.append(run_breaching(model, g, yb, budget, xb if case.bn == "exact" else None, seed))
                        spent += budget
                    else:
                        result = run_ours(method, model, g, yb, budget, bn, seed)
                        recon.append(result.images)
                        spent += int(result.timing["trial_iterations"])
                        trials += trial_records(result, xb, seed, b)
                recon_t = torch.cat(recon)
                per_seed.append((recon_t, [evaluate_reconstruction(recon_t[i : i + case.batch].clamp(0, 1), x_t[i : i + case.batch])
                                           for i in range(0, n, case.batch)]))
            seconds = (time.perf_counter() - start) / seeds
            recon_t, scores = per_seed[0]  # the grid shows seed 0's
            matched = torch.cat([recon_t[i : i + case.batch][torch.as_tensor(s["perm"])]
                                 for i, s in zip(range(0, n, case.batch), scores)])
            shown.append((method, matched))
            row = {**asdict(case), "case": case.label, "method": method, "budget": budget, "images": n,
                   **mean_scores([s for _, scores_s in per_seed for s in scores_s]),
                   "compute": spent / (budget * len(batches) * seeds), "seconds": seconds, "seeds": seeds}
            if seeds > 1:
                row["lpips_seeds"] = [mean_scores(scores_s)["lpips"] for _, scores_s in per_seed]
                row["lpips_sd"] = statistics.stdev(row["lpips_seeds"])
            if trials:
                runs = {(t["seed"], t["batch"]) for t in trials}
                row["oracle_lpips"] = statistics.fmean(min(t["lpips"] for t in trials if (t["seed"], t["batch"]) == k) for k in runs)
                row["trials"] = trials
            rows.append(row)
            console.print(f"{case.label:36s} {budget:5d} {method:22s} LPIPS {lpips_cell(row)}  PSNR {row['psnr']:5.2f}  "
                          f"SSIM {row['ssim']:.3f}  compute {row['compute']:.2f}x  {seconds:6.1f} s", highlight=False)
        if budget in budgets:
            image_grid(out / f"grid-{case.label.replace(' ', '-')}-{budget}.png", shown,
                       f"{case.label}, {budget} iterations, labels known (rows: originals, then each method, matched)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", choices=sorted(CASE_SETS), default="readme")
    parser.add_argument("--budgets", default="300,1200", help="iteration budgets, e.g. 300,1200,4800")
    parser.add_argument("--images", type=int, default=4, help="private images per case (a multiple of the batch size)")
    parser.add_argument("--methods", default=",".join([*VARIANTS, "breaching"]),
                        help=f"comma-separated: {', '.join(VARIANTS)}, ours:PRESET, breaching")
    parser.add_argument("--out", default="runs/attack-quality", help="folder for the table, the figures and the grids")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=1,
                        help="random starts per method and batch (seeds 0..N-1); rows average them and show their spread")
    parser.add_argument("--shard", default="0/1", help="I/N: run the cases I, I+N, ... of the set (N processes side by side)")
    parser.add_argument("--only", default=None, metavar="LABEL,...",
                        help="run only these cases of the set, by the label the table prints (e.g. 'cifar10 convnet b4')")
    parser.add_argument("--render", default=None, metavar="ROWS,...",
                        help="measure nothing: one table from rows.json files of earlier runs (shards), into --out")
    args = parser.parse_args()
    try:
        shard, shards = (int(v) for v in args.shard.split("/"))
        assert 0 <= shard < shards
    except (ValueError, AssertionError):
        parser.error(f"--shard: expected I/N with 0 <= I < N, got {args.shard!r}")
    console = Console(width=220)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.render:
        files = [Path(f) for f in args.render.split(",")]
        rows = []
        for f in files:
            try:
                loaded = json.loads(f.read_text())
                if not isinstance(loaded, list) or not all(isinstance(r, dict) and {"case", "method", "budget", "lpips"} <= r.keys()
                                                           for r in loaded):
                    raise ValueError("not a list of this benchmark's rows")
            except (OSError, ValueError) as exc:
                parser.error(f"--render: cannot read rows from {f}: {exc}")
            rows += loaded
        render(rows, out, console, sources=[f.parent for f in files])
        return
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in VARIANTS and m != "breaching"
               and not (m.startswith("ours:") and m.removeprefix("ours:") in PRESETS)]
    if unknown:
        parser.error(f"--methods: unknown method {unknown[0]!r}; choose from {', '.join(VARIANTS)}, breaching, "
                     f"or ours:PRESET with PRESET one of {', '.join(PRESETS)}")
    if "breaching" in methods and breaching is None:
        parser.error("--methods breaching: breaching is not installed; run make bench-setup")
    if args.seeds < 1:
        parser.error(f"--seeds: must be an integer >= 1, got {args.seeds}")
    if args.threads:
        torch.set_num_threads(args.threads)
    budgets = sorted(int(b) for b in args.budgets.split(","))
    rows: list[dict] = []
    cases = CASE_SETS[args.cases]
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        labels = [c.label for c in cases]
        missing = [w for w in wanted if w not in labels]
        if missing:
            parser.error(f"--only: no case {missing[0]!r} in --cases {args.cases}; its cases: {', '.join(labels)}")
        cases = [c for c in cases if c.label in wanted]
    for case in cases[shard::shards]:
        rows += measure(case, methods, budgets, args.images, out, console, args.seeds)
        (out / "rows.json").write_text(json.dumps(rows, indent=1))
    render(rows, out, console)


if __name__ == "__main__":
    main()
