"""Figures 4 and 5: the attack's sensitivity to alpha_TV and alpha_BN (the paper's Appendix A).

Figure 4: one CIFAR-10 image, BN_exact, alpha_TV in {0, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5}
(alpha_BN fixed). Figure 5: a batch of 16, BN_infer, alpha_BN in {0, 0.0005, 0.001, 0.01,
0.05} (alpha_TV fixed). A weight of 0 removes that regularizer. Each point is LPIPS
(matched) of the restart the attack picks by its own objective.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure

from experiments import _inversion as inv
from experiments.base import Cell, CellContext, Figure, Table
from experiments.registry import register

TV_VALUES = [0.0, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5]
BN_VALUES = [0.0, 0.0005, 0.001, 0.01, 0.05]
SWEEPS = {"tv": ("alpha_TV", "Figure 4"), "bn": ("alpha_BN", "Figure 5")}


class SweepsExperiment:
    name = "sweeps"
    description = "alpha_TV and alpha_BN sweeps of the attack (the paper's Figures 4 and 5)"
    presets: dict[str, dict[str, Any]] = {
        "smoke": {
            "seed": 0,
            "data": {"name": "cifar10-sample", "root": ""},
            "model": {"name": "bn-convnet", "options": {"width": 16}},
            "stat_images": 12,
            "attack": {"preset": "huang-eq3", "iterations": 200, "restarts": 1},
            "tv_sweep": {"values": [0.0, 0.01, 0.1, 0.5], "images": 1, "bn": "exact", "alpha_bn": 0.001},
            "bn_sweep": {"values": [0.0, 0.001, 0.05], "images": 4, "bn": "infer", "alpha_tv": 0.05},
        },
        "paper": {
            "seed": 0,
            "data": {"name": "cifar10", "root": ""},
            "model": {"name": "resnet18", "options": {}},
            "stat_images": 512,
            "attack": {"preset": "huang-eq3", "iterations": 10000, "restarts": 1},
            "tv_sweep": {"values": TV_VALUES, "images": 1, "bn": "exact", "alpha_bn": 0.001},
            "bn_sweep": {"values": BN_VALUES, "images": 16, "bn": "infer", "alpha_tv": 0.05},
        },
    }  # fmt: skip

    def cells(self, settings: dict[str, Any]) -> list[Cell]:
        common = {"seed": settings["seed"], "data": settings["data"], "model": settings["model"],
                  "stat_images": settings["stat_images"], **settings["attack"]}
        cells = []
        tv, bn = settings["tv_sweep"], settings["bn_sweep"]
        for v in tv["values"]:
            cells.append(Cell(f"tv/{v:g}", {**common, "images": tv["images"], "bn": tv["bn"], "alpha_tv": float(v), "alpha_bn": tv["alpha_bn"]}))
        for v in bn["values"]:
            cells.append(Cell(f"bn/{v:g}", {**common, "images": bn["images"], "bn": bn["bn"], "alpha_tv": bn["alpha_tv"], "alpha_bn": float(v)}))
        return cells

    def run_cell(self, cell: Cell, workdir: Path, ctx: CellContext) -> dict[str, Any]:
        p = cell.params
        return inv.run_inversion(p, workdir, ctx.progress, images=p["images"], bn=p["bn"], alpha_tv=p["alpha_tv"],
                                 alpha_bn=p["alpha_bn"], iterations=p["iterations"], restarts=p["restarts"], preset=p["preset"])

    def _points(self, settings: dict[str, Any], results: dict[str, dict[str, Any]], sweep: str) -> list[tuple[float, dict[str, Any]]]:
        return [(float(v), results.get(f"{sweep}/{float(v):g}", {})) for v in settings[f"{sweep}_sweep"]["values"]]

    def tables(self, settings: dict[str, Any], results: dict[str, dict[str, Any]]) -> list[Table]:
        a = settings["attack"]
        tables = []
        for sweep, (alpha, fig) in SWEEPS.items():
            s = settings[f"{sweep}_sweep"]
            fixed = "alpha_BN" if sweep == "tv" else "alpha_TV"
            table = Table(f"table_{sweep}_sweep", f"{fig}: LPIPS vs {alpha}, {s['images']} image(s), {inv.BN_LABEL[s['bn']]} "
                          f"({settings['data']['name']}, {settings['model']['name']})",
                          [alpha, "LPIPS avg", "LPIPS best", "LPIPS std", "PSNR avg", "oracle LPIPS avg"])
            for v, r in self._points(settings, results, sweep):
                table.rows.append([v, r.get("lpips_avg"), r.get("lpips_best"), r.get("lpips_std"), r.get("psnr_avg"),
                                   r.get("oracle_lpips_avg")])
            scored = [(r["lpips_avg"], v) for v, r in self._points(settings, results, sweep) if r.get("lpips_avg") is not None]
            if scored:
                table.notes.append(f"Lowest LPIPS avg at {alpha} = {min(scored)[1]:g} (paper: "
                                   f"{'alpha_TV = 0.01' if sweep == 'tv' else 'alpha_BN = 0.001'}).")
            table.notes.append(f"Attack {a['preset']}, {a['iterations']} iterations, {a['restarts']} restart(s), labels known, "
                               f"{fixed} = {s['alpha_bn' if sweep == 'tv' else 'alpha_tv']}; weight 0 removes the regularizer. "
                               "LPIPS (AlexNet) after one-to-one matching, of the restart picked by the attack objective.")
            tables.append(table)
        return tables

    def figures(self, settings: dict[str, Any], results: dict[str, dict[str, Any]], out_dir: Path) -> list[Figure]:
        out_dir.mkdir(parents=True, exist_ok=True)
        figures = []
        for sweep, (alpha, fig_name) in SWEEPS.items():
            pts = [(v, r) for v, r in self._points(settings, results, sweep) if r.get("lpips_avg") is not None]
            if not pts:
                continue
            s = settings[f"{sweep}_sweep"]
            fig = MplFigure(figsize=(5, 3.4), dpi=120)
            FigureCanvasAgg(fig)
            ax = fig.add_subplot(1, 1, 1)
            xs = [v for v, _ in pts]
            avg = [r["lpips_avg"] for _, r in pts]
            std = [r["lpips_std"] for _, r in pts]
            ax.errorbar(xs, avg, yerr=std, marker="o", capsize=3, label="LPIPS avg ± std")
            ax.plot(xs, [r["lpips_best"] for _, r in pts], marker="x", linestyle="--", label="LPIPS best")
            positive = [v for v in xs if v > 0]
            ax.set_xscale("symlog", linthresh=min(positive) if positive else 1e-3)
            ax.set_xlabel(alpha)
            ax.set_ylabel("LPIPS (lower = more leakage)")
            ax.set_title(f"{fig_name}: {s['images']} image(s), {inv.BN_LABEL[s['bn']]}", fontsize=9)
            ax.legend(fontsize=7)
            fig.tight_layout()
            path = out_dir / f"{sweep}_sweep.png"
            fig.savefig(path)
            figures.append(Figure(f"{sweep}_sweep", f"{fig_name}: LPIPS vs {alpha}", path))
            loaded = [(v, inv.load_recon(r)) for v, r in pts]
            loaded = [(v, rec) for v, rec in loaded if rec is not None]
            if loaded:
                rows = [("original", loaded[0][1]["originals"])]
                rows += [(f"{alpha}={v:g}", rec["reconstruction"]) for v, rec in loaded]
                grid = out_dir / f"{sweep}_sweep_grid.png"
                inv.image_grid(grid, rows, f"{fig_name}: reconstructions per {alpha}")
                figures.append(Figure(f"{sweep}_sweep_grid", f"{fig_name}: reconstructions per {alpha}", grid))
        return figures


register(SweepsExperiment)
