"""What an attack leaves behind: a PNG grid, the loss curve, the reconstruction, metrics and config.

Every attack job (an optimisation attack, a malicious server's recovery) writes the
same files through :func:`write_attack_outputs`. In the grid, originals (matched
one-to-one to the reconstructions) sit above the reconstructions, so a reader sees
at a glance what leaked.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import secrets
import threading
from pathlib import Path
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from safetensors.torch import save_file
from torchvision.utils import make_grid, save_image

# Attack workers may run on threads; matplotlib's text layout is not thread-safe.
_PLOT_LOCK = threading.Lock()

GRID_PNG = "grid.png"
LOSS_PNG = "loss.png"
LOSS_CSV = "loss.csv"
METRICS_JSON = "metrics.json"
ATTACK_JSON = "attack.json"
RECONSTRUCTION = "reconstruction.safetensors"
ATTACKS_DIR = "attacks"
GRID_LIMIT = 64  # images shown in a grid


def save_grid(path: Path, reconstructions: torch.Tensor, originals: torch.Tensor | None = None, per_row: int = 16,
              originals_below: bool = False) -> None:
    """Rows of originals above (or below) rows of reconstructions (same order), white gutters.

    Small images are enlarged (nearest neighbour) to about 96 pixels so a grid of
    32x32 images is readable.
    """
    nrow = min(per_row, len(reconstructions))
    scale = max(1, 96 // reconstructions.shape[-1])
    if scale > 1:
        enlarge = torch.nn.Upsample(scale_factor=scale, mode="nearest")
        reconstructions = enlarge(reconstructions)
        originals = enlarge(originals) if originals is not None else None
    parts = []
    if originals is not None:
        parts.append(make_grid(originals.clamp(0, 1), nrow=nrow, padding=2, pad_value=1.0))
    parts.append(make_grid(reconstructions.clamp(0, 1), nrow=nrow, padding=2, pad_value=1.0))
    if len(parts) == 2:
        if originals_below:
            parts.reverse()
        gutter = torch.ones(parts[0].shape[0], 6, parts[0].shape[2])
        parts.insert(1, gutter)
    save_image(torch.cat(parts, dim=1), str(path))


def save_loss_curve(out_dir: Path, curve: list[float], title: str) -> None:
    with (out_dir / LOSS_CSV).open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["iteration", "loss"])
        writer.writerows(enumerate(curve))
    with _PLOT_LOCK:
        fig = Figure(figsize=(5, 3), dpi=120)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.plot(range(len(curve)), curve, lw=1)
        if curve and min(curve) > 0:
            ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_ylabel("attack loss")
        ax.set_title(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(out_dir / LOSS_PNG)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))


def attack_dir(run_dir: Path, round: int, label: str, method: str) -> Path:
    """A fresh ``RUN_DIR/attacks/r<round>-<label>-<method>-<stamp>-<hex>`` folder."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = run_dir / ATTACKS_DIR / f"r{round}-{label}-{method}-{stamp}-{secrets.token_hex(2)}"
    out_dir.mkdir(parents=True)
    return out_dir


def write_attack_outputs(out_dir: Path, *, images: torch.Tensor, shown: torch.Tensor, labels: torch.Tensor | None,
                         loss_curve: list[float], title: str, metrics: dict[str, Any], config: dict[str, Any],
                         originals: torch.Tensor | None = None, originals_below: bool = False) -> None:
    """The grid of ``shown`` with the real images: originals over their matched reconstructions (when the
    metrics hold the matching), or each reconstruction's nearest real image under it (an audit); the
    loss curve, the reconstructed ``images`` as the attack returned them, ``metrics.json``, ``attack.json``."""
    if originals is not None and len(originals) and "perm" in metrics:
        pool = torch.cat([shown, torch.zeros(max(0, len(originals) - len(shown)), *shown.shape[1:])])
        save_grid(out_dir / GRID_PNG, pool[torch.as_tensor(metrics["perm"])][:GRID_LIMIT], originals[:GRID_LIMIT])
    elif originals is not None and len(shown) and len(originals) == len(shown):
        save_grid(out_dir / GRID_PNG, shown[:GRID_LIMIT], originals[:GRID_LIMIT], originals_below=originals_below)
    elif len(shown):
        save_grid(out_dir / GRID_PNG, shown[:GRID_LIMIT])
    if loss_curve:
        save_loss_curve(out_dir, loss_curve, title)
    tensors = {"images": images.detach().contiguous()}
    if labels is not None:
        tensors["labels"] = labels.contiguous()
    save_file(tensors, str(out_dir / RECONSTRUCTION))
    write_json(out_dir / METRICS_JSON, metrics)
    write_json(out_dir / ATTACK_JSON, config)
