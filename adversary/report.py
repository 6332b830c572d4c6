"""What an attack leaves behind: a PNG grid, the loss curve, metrics and config.

Originals (matched one-to-one to the reconstructions) sit above the
reconstructions, so a reader sees at a glance what leaked.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import threading

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torchvision.utils import make_grid, save_image

# Attack workers may run on threads; matplotlib's text layout is not thread-safe.
_PLOT_LOCK = threading.Lock()

GRID_PNG = "grid.png"
LOSS_PNG = "loss.png"
LOSS_CSV = "loss.csv"
METRICS_JSON = "metrics.json"
ATTACK_JSON = "attack.json"


def save_grid(path: Path, reconstructions: torch.Tensor, originals: torch.Tensor | None = None, per_row: int = 16) -> None:
    """Rows of originals above rows of reconstructions (same order), white gutters.

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
