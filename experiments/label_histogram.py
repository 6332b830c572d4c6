"""Figure 2a: how many distinct labels a random training batch holds.

Label inference from the gradient (Zhao et al., Yin et al.) works when every image of
a batch has its own label; the paper's Figure 2a shows that on CIFAR-10 this is rare
already at batch size 16 and practically never happens from 32 on. For each batch
size, ``batches`` batches are drawn uniformly without replacement from the training
labels (seeded per batch size) and their distinct labels counted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure

from experiments.base import Cell, CellContext, Figure, Table
from experiments.registry import register
from fl_sim.data import load_dataset


class LabelHistogramExperiment:
    name = "label_histogram"
    description = "distinct labels per random training batch (the paper's Figure 2a)"
    presets: dict[str, dict[str, Any]] = {
        "smoke": {"seed": 0, "data": {"name": "mnist-5k", "root": ""}, "batch_sizes": [16, 32, 64, 128], "batches": 1000},
        "paper": {"seed": 0, "data": {"name": "cifar10", "root": ""}, "batch_sizes": [16, 32, 64, 128], "batches": 1000},
    }

    def cells(self, settings: dict[str, Any]) -> list[Cell]:
        return [
            Cell(f"b{b}", {"seed": settings["seed"], "data": settings["data"], "batch_size": int(b), "batches": int(settings["batches"])})
            for b in settings["batch_sizes"]
        ]

    def run_cell(self, cell: Cell, workdir: Path, ctx: CellContext) -> dict[str, Any]:
        p = cell.params
        labels, num_classes = _train_labels(p["data"], p["seed"])
        return distinct_label_stats(labels, num_classes, p["batch_size"], p["batches"], p["seed"])

    def tables(self, settings: dict[str, Any], results: dict[str, dict[str, Any]]) -> list[Table]:
        table = Table(
            name="distinct_labels",
            title=f"Distinct labels per random batch ({settings['data']['name']}, {settings['batches']} batches per size)",
            columns=["Batch size", "Mean distinct", "Min", "Max", "All labels unique (fraction)", "Classes"],
        )
        for b in settings["batch_sizes"]:
            r = results.get(f"b{b}")
            if r is None:
                table.rows.append([b, None, None, None, None, None])
                continue
            table.rows.append([b, round(r["mean"], 3), r["min"], r["max"], r["frac_unique"], r["num_classes"]])
        table.notes.append(
            "Batches drawn uniformly without replacement from the training labels. Gradient-based label "
            "inference needs all labels unique; with 10 classes that is impossible from batch size 11 on."
        )
        return [table]

    def figures(self, settings: dict[str, Any], results: dict[str, dict[str, Any]], out_dir: Path) -> list[Figure]:
        out_dir.mkdir(parents=True, exist_ok=True)
        sizes = [b for b in settings["batch_sizes"] if f"b{b}" in results]
        fig = MplFigure(figsize=(6.5, 4), dpi=120)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        num_classes = max((results[f"b{b}"]["num_classes"] for b in sizes), default=10)
        xs = np.arange(1, num_classes + 1)
        width = 0.8 / max(len(sizes), 1)
        for i, b in enumerate(sizes):
            r = results[f"b{b}"]
            frac = np.asarray(r["histogram"], dtype=float) / max(r["batches"], 1)
            ax.bar(xs + (i - (len(sizes) - 1) / 2) * width, frac[: len(xs)], width=width, label=f"batch size {b}")
        ax.set_xticks(xs)
        ax.set_xlabel("number of distinct labels in the batch")
        ax.set_ylabel("fraction of batches")
        ax.set_title(f"Distinct labels per batch ({settings['data']['name']})", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / "label_histogram.png"
        fig.savefig(path)
        return [Figure("label_histogram", "Distribution of distinct labels per batch, by batch size", path)]


def _train_labels(data: dict[str, Any], seed: int) -> tuple[np.ndarray, int]:
    ds = load_dataset(data["name"], root=data.get("root") or None, seed=seed)
    labels = ds.train_y.numpy().astype(np.int64)
    num_classes = len(ds.class_names) if ds.class_names else int(labels.max()) + 1
    return labels, num_classes


def distinct_label_stats(labels: np.ndarray, num_classes: int, batch_size: int, batches: int, seed: int) -> dict[str, Any]:
    """Distinct-label counts of ``batches`` random batches (without replacement) of ``labels``."""
    labels = np.asarray(labels)
    if batch_size > len(labels):
        raise ValueError(f"batch size {batch_size} exceeds the {len(labels)} training labels")
    rng = np.random.default_rng([seed, batch_size])
    counts = np.array([np.unique(labels[rng.choice(len(labels), batch_size, replace=False)]).size for _ in range(batches)])
    histogram = np.bincount(counts, minlength=num_classes + 1)[1:]  # index k-1 = batches with k distinct labels
    return {
        "batch_size": batch_size,
        "batches": batches,
        "num_classes": num_classes,
        "mean": float(counts.mean()),
        "min": int(counts.min()),
        "max": int(counts.max()),
        "frac_unique": float(np.mean(counts == batch_size)),
        "histogram": histogram.tolist(),
    }


register(LabelHistogramExperiment)
