"""The run report's charts as PNG files (matplotlib, no display): training curves and traffic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

BARS = 20  # rounds drawn as bars; more as steps


def _figure(width: float = 6.0, height: float = 3.2) -> Figure:
    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def training_curves(rounds: list[dict[str, Any]], path: Path) -> Path | None:
    """Test accuracy and losses per round; None when no round reported any of them."""
    def series(key: str) -> tuple[list[int], list[float]]:
        points = [(r["round"], r[key]) for r in rounds if r.get(key) is not None]
        return [p[0] for p in points], [p[1] for p in points]

    acc, train, test = series("eval_acc"), series("train_loss"), series("eval_loss")
    if not (acc[0] or train[0] or test[0]):
        return None
    fig = _figure(9.0, 3.2)
    left, right = fig.subplots(1, 2)
    if acc[0]:
        left.plot(acc[0], [100 * v for v in acc[1]], marker="o", ms=3, lw=1.5, color="tab:green")
        left.set_ylim(0, 100)
    left.set_title("test accuracy (%)", fontsize=10)
    left.set_xlabel("round")
    if train[0]:
        right.plot(*train, lw=1, color="tab:blue", alpha=0.8, label="train loss (clients' mean)")
    if test[0]:
        right.plot(*test, marker="o", ms=3, lw=1.5, color="tab:red", label="test loss")
    right.set_title("loss", fontsize=10)
    right.set_xlabel("round")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path


def traffic_chart(rows: list[tuple[int | None, str, int, int]], path: Path) -> Path | None:
    """Bytes on the wire per round, down (server to clients) and up; None without rounds."""
    by_dir: dict[str, dict[int, int]] = {"down": {}, "up": {}}
    for rnd, direction, _count, size in rows:
        if rnd is not None and direction in by_dir:
            by_dir[direction][rnd] = by_dir[direction].get(rnd, 0) + size
    rounds = sorted(set(by_dir["down"]) | set(by_dir["up"]))
    if not rounds:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    width = 0.4
    top = 0.0
    for offset, direction, color, style in ((-width / 2, "down", "tab:gray", "-"), (width / 2, "up", "tab:orange", "--")):
        label = f"{direction} ({'server to clients' if direction == 'down' else 'clients to server'})"
        sizes = [by_dir[direction].get(r, 0) / 1e6 for r in rounds]
        top = max(top, *sizes)
        if len(rounds) <= BARS:
            ax.bar([r + offset for r in rounds], sizes, width=width, color=color, label=label)
        else:  # a hundred pairs of bars are a blur: steps (dashed on top, so equal sizes show both)
            ax.step(rounds, sizes, where="mid", color=color, label=label, lw=2, ls=style)
    ax.set_ylim(0, top * 1.3 or 1.0)
    ax.set_xlabel("round")
    ax.set_ylabel("MB on the wire")
    ax.set_title("intercepted traffic per round", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path)
    return path
