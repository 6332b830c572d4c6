"""A malicious server beside the paper's honest one, in the paper's table layout.

For each server (the paper's honest-but-curious server running the optimization
attack; trap weights; imprint; class fishing), each deployment defense (none,
secure aggregation, DP-SGD, GradPrune, the clients' model vetting; and FedAvg with
several local steps instead of FedSGD) and each batch size, one federated run with
the server as the adversary (FedSGD unless the column says otherwise). The attacked round
is the last one (earlier rounds are honest, so vetting has a model to compare with
and honest rounds to raise false alarms on). Under secure aggregation several clients
take part and the server attacks the round's aggregate (the honest server: the change
of the global model; a malicious one: the unmasked mean it computes).

Tables: one per server, defenses as columns; per batch size the images recovered
exactly (PSNR >= 40 dB after one-to-one matching), the matched LPIPS and PSNR. Fishing
goes after one class: its rows count that class's images. A detection table gives the
vetting defense's detection rate on manipulated replies and false alarms on honest ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure

from adversary.evaluation import EXACT_PSNR
from adversary.jobs import JobBook
from experiments.base import Cell, CellContext, Figure, Table
from experiments.registry import register
from fl_sim.config import build_config
from fl_sim.rundir import read_summary

SERVERS = {
    "honest": {"label": "honest server (optimization attack)", "role": "curious-server"},
    "trap-weights": {"label": "trap weights (Boenisch et al.)", "role": "malicious-server"},
    "imprint": {"label": "imprint (Fowl et al.)", "role": "malicious-server"},
    "fishing": {"label": "class fishing (Wen et al.)", "role": "malicious-server"},
}

DEFENSES = [
    {"label": "none"},
    {"label": "SecAgg", "secagg": True},
    {"label": "DP sigma=0.1", "stack": [{"name": "dp", "noise_multiplier": 0.1, "clip": 1.0}]},
    {"label": "GradPrune 0.9", "stack": [{"name": "gradprune", "p": 0.9}]},
    {"label": "vetting", "stack": [{"name": "vetting"}]},
    {"label": "FedAvg 3 steps", "local_steps": 3},  # a deployment setting, not a defense: several local steps
]

SMOKE: dict[str, Any] = {
    "seed": 0,
    "data": {"name": "mnist-5k", "root": ""},
    # One model every server can attack: trap weights need a first Linear layer.
    "model": {"name": "mlp", "options": {"hidden": 1000}},
    "models": {},  # per-server model overrides, e.g. {"imprint": {"name": "resnet18", "options": {}}}
    "servers": list(SERVERS),
    "defenses": DEFENSES,
    "batch_sizes": [1, 16, 32, 128],
    "rounds": 3,  # the last one is attacked (and manipulated)
    "secagg_clients": 3,
    "attack": {"preset": "inverting-gradients", "iterations": 200},
    "fishing": {"target": "auto"},
}


class MaliciousServerExperiment:
    name = "malicious_server"
    description = "malicious-server attacks (trap weights, imprint, fishing) beside the honest server, against defenses"
    presets: dict[str, dict[str, Any]] = {
        "smoke": SMOKE,
        "paper": {
            **SMOKE,
            "data": {"name": "cifar10", "root": ""},
            # GroupNorm: DP-SGD needs per-example gradients, which BatchNorm does not have.
            "model": {"name": "resnet18", "norm": "group", "options": {}},
            "models": {"trap-weights": {"name": "mlp", "options": {"hidden": 4096}}},
            "attack": {"preset": "inverting-gradients", "iterations": 4800},
        },
    }

    def cells(self, settings: dict[str, Any]) -> list[Cell]:
        cells = []
        for server in settings["servers"]:
            if server not in SERVERS:
                raise ValueError(f"servers: unknown {server!r}; choose from {', '.join(SERVERS)}")
            model = settings["models"].get(server, settings["model"])
            for b in settings["batch_sizes"]:
                for d in settings["defenses"]:
                    params = {"seed": settings["seed"], "data": settings["data"], "model": model, "server": server,
                              "defense": d, "batch_size": b, "rounds": settings["rounds"],
                              "secagg_clients": settings["secagg_clients"], "attack": settings["attack"],
                              "fishing": settings["fishing"]}
                    cells.append(Cell(f"{server}/b{b}/{d['label']}", params))
        return cells

    def run_cell(self, cell: Cell, workdir: Path, ctx: CellContext) -> dict[str, Any]:
        return _run(cell.params, workdir, ctx)

    def tables(self, settings: dict[str, Any], results: dict[str, dict[str, Any]]) -> list[Table]:
        labels = [d["label"] for d in settings["defenses"]]
        tables = []
        for server in settings["servers"]:
            table = Table(f"table_{server.replace('-', '_')}", f"{SERVERS[server]['label']} ({settings['data']['name']}, "
                          f"{settings['models'].get(server, settings['model'])['name']})", ["", *labels])
            for b in settings["batch_sizes"]:
                cells = [results.get(f"{server}/b{b}/{lab}", {}) for lab in labels]
                table.rows.append([f"bs={b} exact", *[_exact(c) for c in cells]])
                table.rows.append([f"bs={b} LPIPS avg", *[c.get("lpips_avg") for c in cells]])
                table.rows.append([f"bs={b} PSNR avg", *[c.get("psnr_avg") for c in cells]])
            table.notes.append("exact: images recovered with PSNR >= 40 dB after one-to-one matching, of the images "
                               "behind the attacked update (fishing: of the fished class's images in it); LPIPS (AlexNet) "
                               "and PSNR of the matched pairs, lower LPIPS = more leakage.")
            if server == "honest":
                table.notes.append(f"{settings['attack']['preset']}, {settings['attack']['iterations']} iterations, labels "
                                   "known; under SecAgg the attack inverts the change of the global model (all clients' mean).")
            else:
                table.notes.append("Under SecAgg the server inverts the unmasked mean update of "
                                   f"{settings['secagg_clients']} clients; with vetting, clients refuse flagged models.")
            tables.append(table)
        tables.append(self._detection(settings, results))
        return tables

    def _detection(self, settings: dict[str, Any], results: dict[str, dict[str, Any]]) -> Table:
        table = Table("vetting_detection", "Clients' model vetting: detection and false alarms",
                      ["server", "manipulated replies", "detected", "detection rate", "honest replies", "false alarms",
                       "false alarm rate", "checks that fired"])
        vet_label = next((d["label"] for d in settings["defenses"] if any(s["name"] == "vetting" for s in d.get("stack", []))),
                         None)
        for server in settings["servers"]:
            totals = {"manipulated_replies": 0, "detected": 0, "honest_replies": 0, "false_alarms": 0}
            checks: dict[str, int] = {}
            for b in settings["batch_sizes"]:
                vet = results.get(f"{server}/b{b}/{vet_label}", {}).get("vetting") or {}
                for k in totals:
                    totals[k] += int(vet.get(k, 0))
                for k, v in (vet.get("detected_by_check") or {}).items():
                    checks[k] = checks.get(k, 0) + v
            table.rows.append([SERVERS[server]["label"], totals["manipulated_replies"], totals["detected"],
                               _rate(totals["detected"], totals["manipulated_replies"]), totals["honest_replies"],
                               totals["false_alarms"], _rate(totals["false_alarms"], totals["honest_replies"]),
                               ", ".join(f"{k} {v}" for k, v in sorted(checks.items())) or "–"])
        table.notes.append(f"Over the vetting cells of every batch size: {settings['rounds'] - 1} honest rounds, then one "
                           "manipulated round (the honest server manipulates nothing: only false alarms).")
        return table

    def figures(self, settings: dict[str, Any], results: dict[str, dict[str, Any]], out_dir: Path) -> list[Figure]:
        out_dir.mkdir(parents=True, exist_ok=True)
        figures = []
        first = settings["defenses"][0]["label"]
        fig = MplFigure(figsize=(6, 4), dpi=120)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for server in settings["servers"]:
            xs, ys = [], []
            for b in settings["batch_sizes"]:
                r = results.get(f"{server}/b{b}/{first}", {})
                if r.get("num_images"):
                    xs.append(b)
                    ys.append(100 * r["exact_recovered"] / r["num_images"])
            if xs:
                ax.plot(xs, ys, marker="o", label=SERVERS[server]["label"])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("images recovered exactly (%)")
        ax.set_title(f"defense: {first}", fontsize=10)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / "exact_vs_batch.png"
        fig.savefig(path)
        figures.append(Figure("exact_vs_batch", "Images recovered exactly vs batch size", path))
        b = 32 if 32 in settings["batch_sizes"] else settings["batch_sizes"][-1]
        grids = [(server, results.get(f"{server}/b{b}/{first}", {}).get("grid")) for server in settings["servers"]]
        for server, grid in grids:
            if grid and Path(grid).is_file():
                figures.append(Figure(f"grid_{server}", f"{SERVERS[server]['label']}, batch size {b}: originals above "
                                      "their matched reconstructions", Path(grid)))
        return figures


def _exact(cell: dict[str, Any]) -> str | None:
    if "exact_recovered" not in cell:
        return None
    return f"{cell['exact_recovered']}/{cell['num_images']}"


def _rate(hits: int, total: int) -> float | None:
    return round(hits / total, 3) if total else None


def attacked_round(params: dict[str, Any]) -> int:
    """The last round; under SecAgg the honest server sees a round's aggregate only when the next
    round's model goes out, so it attacks the one before."""
    secagg_honest = params["server"] == "honest" and params["defense"].get("secagg")
    return params["rounds"] - 1 if secagg_honest else params["rounds"]


def _config(params: dict[str, Any], workdir: Path) -> Any:
    d, b, server = params["defense"], params["batch_size"], params["server"]
    clients = params["secagg_clients"] if d.get("secagg") else 1
    rounds = params["rounds"]
    tree: dict[str, Any] = {
        "seed": params["seed"], "name": f"{server}-b{b}", "out_dir": str(workdir),
        "data": {"name": params["data"]["name"], "max_train": clients * max(4 * b * d.get("local_steps", 1), 256),
                 "max_test": 500,
                 **({"root": params["data"]["root"]} if params["data"].get("root") else {})},
        "model": {"name": params["model"]["name"], "options": params["model"].get("options", {}),
                  **({"norm": params["model"]["norm"]} if params["model"].get("norm") else {})},
        "federation": {"num_clients": clients, "rounds": rounds, "batch_size": b, "lr": 0.05,
                       "protocol": "fedavg" if d.get("local_steps") else "fedsgd", "local_steps": d.get("local_steps", 1),
                       "secagg": bool(d.get("secagg")), "model_from_server": server == "imprint"},
        "defenses": list(d.get("stack", [])),
        "engine": {"name": "inline"},
        "adversary": {"role": SERVERS[server]["role"], "preset": params["attack"]["preset"],
                      "attack": {"iterations": params["attack"]["iterations"]}, "workers": 1},
    }
    if d.get("secagg"):
        tree["secagg"] = {"clipping_range": 1.0}
    if server == "honest":
        # The paper's strongest honest attacker: labels known; no single batch behind an aggregate, no BN grant.
        tree["adversary"]["options"] = {"rounds": [attacked_round(params)]}
        tree["adversary"]["threat"] = {"labels": "known", "bn_stats": "none"}
        tree["adversary"]["attack"].update({"bn": {"name": "none"}, "regularizers": {"bn_prior": None}})
    else:
        tree["adversary"]["options"] = {"strategy": server, "rounds": [rounds],
                                        **({"target": params["fishing"]["target"]} if server == "fishing" else {})}
    return build_config(tree)


def _run(params: dict[str, Any], workdir: Path, ctx: CellContext) -> dict[str, Any]:
    ctx.progress(f"  {params['server']} server, batch size {params['batch_size']}, {params['defense']['label']}")
    out = ctx.simulation()(_config(params, workdir), quiet=True)
    jobs = [j for j in JobBook(out.run_dir).jobs() if j.target.round == attacked_round(params)]
    failed = [j for j in jobs if j.state != "done"]
    if failed or not jobs:  # a failed cell is not cached; it runs again next time
        reason = (failed[0].error or failed[0].state).splitlines()[0] if failed else "no attack was scheduled"
        raise RuntimeError(f"{params['server']}: {reason}")
    exact = images = 0
    lpips: list[float] = []
    psnr: list[float] = []
    grid = None
    for job in jobs:
        m = job.metrics or {}
        p = [float(v) for v in m.get("psnr", [])]
        images += int(m.get("num_images", len(p)))
        exact += int(m["exact_recovered"]) if "exact_recovered" in m else sum(v >= EXACT_PSNR for v in p)
        lpips += [float(v) for v in m.get("lpips", [])]
        psnr += [min(v, 100.0) for v in p]
        grid = grid or (str(Path(job.out_dir) / "grid.png") if (Path(job.out_dir) / "grid.png").is_file() else None)
    return {"run_dir": str(out.run_dir), "attacks": len(jobs), "num_images": images, "exact_recovered": exact,
            "lpips_avg": float(np.mean(lpips)) if lpips else None, "psnr_avg": float(np.mean(psnr)) if psnr else None,
            "grid": grid, "vetting": read_summary(out.run_dir).get("vetting")}


register(MaliciousServerExperiment)
