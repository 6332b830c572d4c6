"""Figure 2b: the attack with and without the private labels.

The same private batch is attacked (Eq. 3, BN_exact) once with the labels granted
and once with them unknown, reconstructed jointly with the images (DLG-style soft
labels, the paper's worst case for the attacker). Label-inference strategies
(``idlg``, ``yin``, ``count-aware``) can be added to ``label_settings``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from experiments import _inversion as inv
from experiments.base import Cell, CellContext, Figure, Table
from experiments.registry import register


class LabelsKnownExperiment:
    name = "labels_known"
    description = "attack with vs without known labels (the paper's Figure 2b)"
    presets: dict[str, dict[str, Any]] = {
        "smoke": {
            "seed": 0,
            "data": {"name": "cifar10-sample", "root": ""},
            "model": {"name": "bn-convnet", "options": {"width": 16}},
            "images": 4, "stat_images": 12, "bn": "exact",
            "label_settings": ["known", "joint"],
            "attack": {"preset": "huang-eq3", "iterations": 300, "restarts": 1, "alpha_tv": 0.05, "alpha_bn": 0.001},
        },
        "paper": {
            "seed": 0,
            "data": {"name": "cifar10", "root": ""},
            "model": {"name": "resnet18", "options": {}},
            "images": 16, "stat_images": 512, "bn": "exact",
            "label_settings": ["known", "joint"],
            "attack": {"preset": "huang-eq3", "iterations": 10000, "restarts": 1, "alpha_tv": 0.05, "alpha_bn": 0.001},
        },
    }  # fmt: skip

    def cells(self, settings: dict[str, Any]) -> list[Cell]:
        common = {"seed": settings["seed"], "data": settings["data"], "model": settings["model"], "images": settings["images"],
                  "stat_images": settings["stat_images"], "bn": settings["bn"], **settings["attack"]}
        return [Cell(f"labels/{lab}", {**common, "labels": lab}) for lab in settings["label_settings"]]

    def run_cell(self, cell: Cell, workdir: Path, ctx: CellContext) -> dict[str, Any]:
        p = cell.params
        return inv.run_inversion(p, workdir, ctx.progress, images=p["images"], bn=p["bn"], alpha_tv=p["alpha_tv"],
                                 alpha_bn=p["alpha_bn"], labels=p["labels"], iterations=p["iterations"],
                                 restarts=p["restarts"], preset=p["preset"])

    def tables(self, settings: dict[str, Any], results: dict[str, dict[str, Any]]) -> list[Table]:
        a = settings["attack"]
        table = Table("table_labels", f"Known vs unknown labels, batch of {settings['images']} ({settings['data']['name']}, "
                      f"{settings['model']['name']}, {inv.BN_LABEL[settings['bn']]})", list(inv.LPIPS_COLUMNS))
        for lab in settings["label_settings"]:
            table.rows.append(inv.lpips_row(inv.LABEL_TITLE.get(lab, lab), results.get(f"labels/{lab}", {})))
        table.notes.append(inv.ORACLE_NOTE)
        table.notes.append(f"Attack {a['preset']}: alpha_TV {a['alpha_tv']}, alpha_BN {a['alpha_bn']}, {a['iterations']} iterations, "
                           f"{a['restarts']} restart(s). 'label acc': order-free accuracy of the labels the attack ends with "
                           "(argmax of the jointly optimised soft labels when unknown).")
        table.notes.append("Paper (Figure 2b, qualitative): the reconstruction degrades without the private labels.")
        return [table]

    def figures(self, settings: dict[str, Any], results: dict[str, dict[str, Any]], out_dir: Path) -> list[Figure]:
        loaded = [(lab, inv.load_recon(results.get(f"labels/{lab}", {}))) for lab in settings["label_settings"]]
        loaded = [(lab, r) for lab, r in loaded if r is not None]
        if not loaded:
            return []
        rows = [("original", loaded[0][1]["originals"])]
        rows += [(inv.LABEL_TITLE.get(lab, lab).replace(" (", "\n("), rec["reconstruction"]) for lab, rec in loaded]
        path = out_dir / "fig2b_labels.png"
        inv.image_grid(path, rows, "Figure 2b: reconstruction with and without the private labels")
        return [Figure("fig2b_labels", "Reconstruction with vs without known labels", path)]


register(LabelsKnownExperiment)
