"""Shared pieces of the single-update attack experiments (Figures 1, 2b, 4, 5).

These experiments need no federation: the private batch's FedSGD gradient is
computed directly (mean cross-entropy, BN in train mode), as a client would send
it, and handed to ``adversary.attacks`` as ``AttackInputs``. The model's running
BatchNorm statistics (what ``BN_proxy`` uses and ``BN_infer`` takes as its prior)
are the cumulative average over ``stat_images`` *other* images, standing in for
the running statistics a model carries after some training.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from adversary.attacks import AttackInputs, ThreatModel, build_attack, label_accuracy, record_bn_stats
from adversary.metrics import evaluate_reconstruction
from fl_sim.data import load_dataset, load_sample_images
from fl_sim.data.samples import SAMPLE_SETS
from fl_sim.models import Normalize, build_model

# Which ThreatModel grant each BN / label strategy goes with.
BN_THREAT = {"exact": "exact", "proxy": "proxy", "infer": "infer", "none": "none"}
BN_LABEL = {"exact": "BN_exact", "infer": "BN_infer", "proxy": "BN_proxy", "none": "no BN prior"}
LABEL_THREAT = {"known": "known", "joint": "unknown", "idlg": "infer", "yin": "infer", "count-aware": "infer"}
LABEL_TITLE = {"known": "labels known", "joint": "labels unknown (joint optimisation)", "idlg": "labels inferred (iDLG)",
               "yin": "labels inferred (Yin et al.)", "count-aware": "labels inferred (count-aware)"}


# ----------------------------------------------------------------------------- data and model


def load_images(data: dict[str, Any], count: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The first ``count`` training images of ``data`` (x in [0, 1], y) and the number of classes."""

    name, size = data["name"], data.get("image_size")
    if name in SAMPLE_SETS:
        x, y = load_sample_images(name, size)
        classes = SAMPLE_SETS[name].num_classes
    else:
        ds = load_dataset(name, root=data.get("root") or None, image_size=size)
        x, y, classes = ds.train_x, ds.train_y, ds.num_classes
    if len(x) < count:
        raise ValueError(f"data {name!r} has {len(x)} images, {count} needed (private batch + running-stat images)")
    return x[:count].clone(), y[:count].clone(), int(classes)


def bn_convnet(in_ch: int, num_classes: int, width: int = 16) -> nn.Module:
    """A small 3-conv BatchNorm classifier for CPU smoke runs (ResNet-18 is the paper's model)."""

    w = int(width)
    net = nn.Sequential(
        nn.Conv2d(in_ch, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
        nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),
        nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(8 * w, num_classes),
    )  # fmt: skip
    return nn.Sequential(OrderedDict(normalize=Normalize(in_ch), net=net))


EXPERIMENT_MODELS = ("bn-convnet",)  # built here, beside the model registry's


def build(model_cfg: dict[str, Any], shape: tuple[int, int, int], num_classes: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    options = dict(model_cfg.get("options", {}))
    if model_cfg["name"] == "bn-convnet":
        return bn_convnet(shape[0], num_classes, **options)
    return build_model(model_cfg["name"], shape, num_classes, **options)


def set_running_stats(model: nn.Module, x: torch.Tensor, chunk: int = 64) -> None:
    """Running statistics = cumulative average over ``x`` (train-mode forward, weights untouched)."""

    layers = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    if not layers or len(x) == 0:
        return
    saved = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(0, len(x), chunk):
            part = x[i : i + chunk]
            if len(part) > 1 or part.shape[-1] > 1:
                model(part)
    for m, mom in zip(layers, saved):
        m.momentum = mom


def fedsgd_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """What a FedSGD client sends: the mean cross-entropy gradient of every parameter (train mode)."""
    model = copy.deepcopy(model).train()  # the client's forward must not move the attacker's running stats
    names, params = zip(*model.named_parameters())
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    return {n: g.detach() for n, g in zip(names, grads)}


def prepare(params: dict[str, Any], images: int, offset: int = 0):
    """(model, private x, private y, AttackInputs) for the first ``images`` after ``offset`` images.

    The next ``stat_images`` images set the running statistics. Labels and the private
    batch's BN statistics are put in ``AttackInputs``; the ThreatModel decides whether
    the attack may use them (``check_grants``).
    """

    stat = int(params.get("stat_images", 0))
    x, y, classes = load_images(params["data"], offset + images + stat)
    xb, yb = x[offset : offset + images], y[offset : offset + images]
    model = build(params["model"], tuple(x.shape[1:]), classes, int(params["seed"]))
    set_running_stats(model, x[offset + images :])
    model.train()
    inputs = AttackInputs(model, fedsgd_gradient(model, xb, yb), labels=yb, bn_exact=record_bn_stats(model, xb),
                          image_shape=tuple(x.shape[1:]), num_classes=classes)
    return model, xb, yb, inputs


# ----------------------------------------------------------------------------- attack


def attack_overrides(iterations: int, restarts: int, bn: str, alpha_tv: float, alpha_bn: float,
                     labels: str = "known", seed: int = 0) -> dict[str, Any]:
    """huang-eq3 overrides; a zero weight removes the regularizer (alpha = 0 in the sweeps)."""
    regs: dict[str, Any] = {"tv": {"weight": float(alpha_tv)} if alpha_tv else None}
    regs["bn_prior"] = {"weight": float(alpha_bn)} if alpha_bn and bn != "none" else None
    return {"iterations": int(iterations), "restarts": int(restarts), "seed": int(seed), "bn": {"name": bn},
            "labels": {"name": labels}, "regularizers": regs}


def run_inversion(params: dict[str, Any], workdir: Path, progress: Callable[[str], None], *, images: int, bn: str,
                  alpha_tv: float, alpha_bn: float, labels: str = "known", iterations: int, restarts: int,
                  preset: str = "huang-eq3", offset: int = 0) -> dict[str, Any]:
    """Attack one private batch; LPIPS (matched) of the trial the attack picks and of the oracle trial."""

    _model, xb, yb, inputs = prepare(params, images, offset)
    threat = ThreatModel(labels=LABEL_THREAT[labels], bn_stats=BN_THREAT[bn], num_images=images)
    attack = build_attack(preset, attack_overrides(iterations, restarts, bn, alpha_tv, alpha_bn, labels, int(params["seed"])))
    every = max(1, iterations // 5)

    def callback(i: int, loss: float) -> None:
        if (i + 1) % every == 0:
            progress(f"    iteration {i + 1}/{iterations} (restarts {restarts}): loss {loss:.4g}")

    result = attack.run(inputs, threat, callback=callback)
    trials = result.all_images if result.all_images is not None else result.images[None]
    per_trial = [evaluate_reconstruction(t.clamp(0, 1), xb) for t in trials]
    chosen = per_trial[result.best_trial]
    oracle_i = int(np.argmin([m["lpips_avg"] for m in per_trial]))
    oracle = per_trial[oracle_i]
    workdir.mkdir(parents=True, exist_ok=True)
    recon_path = workdir / "reconstruction.pt"
    perm = torch.as_tensor(chosen["perm"])
    torch.save({"originals": xb, "reconstruction": result.images[perm].clamp(0, 1),
                "oracle": trials[oracle_i][torch.as_tensor(oracle["perm"])].clamp(0, 1)}, recon_path)
    return {
        "lpips_avg": chosen["lpips_avg"], "lpips_best": chosen["lpips_best"], "lpips_std": chosen["lpips_std"],
        "psnr_avg": chosen["psnr_avg"], "ssim_avg": chosen["ssim_avg"], "lpips": chosen["lpips"],
        "chosen_trial": int(result.best_trial), "oracle_trial": oracle_i,
        "oracle_lpips_avg": oracle["lpips_avg"], "oracle_lpips_best": oracle["lpips_best"], "oracle_lpips_std": oracle["lpips_std"],
        "trial_lpips_avg": [m["lpips_avg"] for m in per_trial], "trial_objectives": result.trial_objectives,
        "label_accuracy": label_accuracy(result.labels, yb), "images": images, "restarts": restarts,
        "iterations": iterations, "seconds": result.timing["total_s"], "recon": str(recon_path),
    }


# ----------------------------------------------------------------------------- figures


def load_recon(result: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    path = result.get("recon")
    if not path or not Path(path).is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def image_grid(path: Path, rows: list[tuple[str, torch.Tensor]], title: str) -> None:
    """One labelled row of images per entry (matplotlib Figure + Agg canvas, no pyplot)."""

    cols = max(len(t) for _, t in rows)
    size = 1.1 if cols > 4 else 1.5
    fig = MplFigure(figsize=(1.6 + size * cols, 0.25 + size * len(rows)), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(imgs):
                img = imgs[c].detach().clamp(0, 1).permute(1, 2, 0).numpy()
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                          interpolation="nearest")
            if c == 0:
                ax.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=min(0.45, 1.5 / (1.6 + size * cols)), right=0.99, top=1 - 0.3 / (0.25 + size * len(rows)),
                        bottom=0.01, wspace=0.05, hspace=0.05)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def lpips_row(label: str, result: dict[str, Any]) -> list[Any]:
    """[label, avg, best, std, PSNR avg, oracle avg, chosen/oracle trial, label accuracy]."""
    if not result:
        return [label, None, None, None, None, None, None, None]
    return [label, result["lpips_avg"], result["lpips_best"], result["lpips_std"], result["psnr_avg"],
            result["oracle_lpips_avg"], f"{result['chosen_trial']}/{result['oracle_trial']} of {result['restarts']}",
            result["label_accuracy"]]


LPIPS_COLUMNS = ["", "LPIPS avg", "LPIPS best", "LPIPS std", "PSNR avg", "oracle LPIPS avg", "trial chosen/oracle",
                 "label acc"]
ORACLE_NOTE = ("LPIPS (AlexNet) after one-to-one matching; lower = more leakage. The LPIPS columns score the restart the "
               "attack itself picks (lowest attack objective, no ground truth). 'oracle' scores the restart with the "
               "lowest LPIPS against the private images, the choice the paper's Figure 1 shows; it needs the "
               "ground truth and is an upper bound on leakage.")
