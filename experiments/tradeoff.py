"""Table 2 / Table 5: the utility-security trade-off of defenses.

For each defense: a federated training run measures utility (test accuracy,
training time relative to no defense); for each defense and attack batch size a
FedSGD run of one client with a small private set is tapped and every captured
update is attacked (the paper's Eq. 3 attack, alpha_TV chosen per defense).
For MixUp and InstaHide the attack recovers *encoded* images; the attacker then
eavesdrops ``epochs`` passes over the client's data and, granted the mixing keys
(the paper's upper bound), decodes the private images by least squares
(Carlini et al.). LPIPS is computed after one-to-one matching, over the private
images, and reported as average, best and standard deviation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure

from adversary.attacks import huang_eq3_for_defense
from adversary.decode_job import run_decode_job
from adversary.job import run_job
from adversary.jobs import JobBook
from adversary.observation import client_updates
from adversary.roles import AttackTarget
from adversary.traffic_log import TrafficLog
from clients.overhead import measure_overhead
from experiments._runs import cell_run_config
from experiments.base import Cell, CellContext, Figure, Table
from experiments.registry import register
from fl_sim.config import RunConfig, deep_merge

ENCODERS = ("mixup", "instahide")
# ABAB pairs per defense: one pair's ratio scatters by about 10 % on a shared 2-core machine (the same
# matmul loop takes 0.16 to 0.25 s there), so the median of 15 moved by 10 % between two runs; of 40, by ~3 %.
OVERHEAD_PAIRS = 40
TIME_ROW = "Training time (x, side by side)"
KEYLESS_SUFFIX = " (no keys)"
TIME_NOTE = ("Training time: a client round (the utility run's model, batch and local steps) with the defenses over one "
             "without, in CPU seconds on one torch thread, run alternately in one process after a warm-up, median of {pairs} pairs "
             "(clients.overhead); SecAgg+'s is the client's whole protocol round (keys, shares, masks, training) over the same "
             "legacy client without it; ~1 (with the middle half of the pair ratios) for a ratio below 1 whose middle half "
             "spans 1: no cost measurable above the noise, and no saving either; \u2013 where nothing is measured. The FL runs' own wall clocks, one run each, "
             "are in the cells (wall_s) and measure the machine's load as much as the defense.")


def _stack(*entries: dict[str, Any]) -> list[dict[str, Any]]:
    return list(entries)


SMOKE_DEFENSES = [
    {"label": "none", "stack": []},
    {"label": "GradPrune 0.5", "stack": _stack({"name": "gradprune", "p": 0.5})},
    {"label": "GradPrune 0.9", "stack": _stack({"name": "gradprune", "p": 0.9})},
    {"label": "GradPrune 0.99", "stack": _stack({"name": "gradprune", "p": 0.99})},
    {"label": "MixUp k=4", "stack": _stack({"name": "mixup", "k": 4})},
    {"label": "InstaHide k=4", "stack": _stack({"name": "instahide", "k": 4})},
    {"label": "GradPrune 0.9 + MixUp 4", "stack": _stack({"name": "mixup", "k": 4}, {"name": "gradprune", "p": 0.9})},
    {"label": "GradPrune 0.9 + InstaHide 4", "stack": _stack({"name": "instahide", "k": 4}, {"name": "gradprune", "p": 0.9})},
]

PAPER_DEFENSES = [
    {"label": "none", "stack": []},
    *[{"label": f"GradPrune {p}", "stack": _stack({"name": "gradprune", "p": p})} for p in (0.5, 0.7, 0.9, 0.95, 0.99, 0.999)],
    *[{"label": f"MixUp k={k}", "stack": _stack({"name": "mixup", "k": k})} for k in (4, 6)],
    *[{"label": f"InstaHide k={k}", "stack": _stack({"name": "instahide", "k": k})} for k in (4, 6)],
    {"label": "GradPrune 0.9 + MixUp 4", "stack": _stack({"name": "mixup", "k": 4}, {"name": "gradprune", "p": 0.9})},
    {"label": "GradPrune 0.9 + InstaHide 4", "stack": _stack({"name": "instahide", "k": 4}, {"name": "gradprune", "p": 0.9})},
]


BEYOND_ROWS = [
    {"label": "none", "stack": []},
    {"label": "DP sigma=0.5", "stack": _stack({"name": "dp", "noise_multiplier": 0.5, "clip": 1.0})},
    {"label": "DP sigma=1", "stack": _stack({"name": "dp", "noise_multiplier": 1.0, "clip": 1.0})},
    {"label": "FedAvg 4 local steps", "stack": [], "attack_set": ["federation.protocol=fedavg", "federation.local_steps=4"]},
    {"label": "non-IID (Dirichlet 0.1)", "stack": [], "utility_set": ["data.partition=dirichlet", "data.alpha=0.1"]},
    {"label": "SecAgg, curious server", "stack": [], "role": "curious-server", "clients": 3,
     "utility_set": ["federation.secagg=true", "federation.upload=delta", "secagg.clipping_range=1.0"],
     "attack_set": ["federation.secagg=true"]},
    {"label": "malicious client", "stack": [], "role": "malicious-client", "clients": 3},
]

MNIST_APPENDIX_DEFENSES = [
    {"label": "none", "stack": []},
    *[{"label": f"GradPrune {p}", "stack": _stack({"name": "gradprune", "p": p})} for p in (0.5, 0.9, 0.99, 0.999, 0.9999)],
    *[{"label": f"MixUp k={k}", "stack": _stack({"name": "mixup", "k": k})} for k in (4, 6)],
    *[{"label": f"InstaHide k={k}", "stack": _stack({"name": "instahide", "k": k})} for k in (4, 6)],
    {"label": "GradPrune 0.99 + MixUp 4", "stack": _stack({"name": "mixup", "k": 4}, {"name": "gradprune", "p": 0.99})},
    {"label": "GradPrune 0.99 + InstaHide 4", "stack": _stack({"name": "instahide", "k": 4}, {"name": "gradprune", "p": 0.99})},
]


SCENARIO_KEYS = ("utility_set", "attack_set", "role", "clients")


def _scenario(entry: dict[str, Any]) -> dict[str, Any]:
    """A row's deployment beyond its defenses: extra config for the training run
    (``utility_set``) and the attacked run (``attack_set``), and an adversary
    ``role`` attacking ``clients`` participants (aggregates) instead of one client."""
    return {k: entry[k] for k in SCENARIO_KEYS if k in entry}


def _encoder(stack: list[dict[str, Any]]) -> str | None:
    return next((d["name"] for d in stack if d["name"] in ENCODERS), None)


def _defense_kind(stack: list[dict[str, Any]]) -> str:
    """Which of the paper's alpha_TV choices applies (the encoder wins over pruning)."""
    enc = _encoder(stack)
    if enc:
        return enc
    return "gradprune" if any(d["name"] == "gradprune" for d in stack) else "none"


ATTACKERS = {
    # Table 2: labels and the private batch's BatchNorm statistics known.
    "strongest": {"threat": {"labels": "known", "bn_stats": "exact"}, "attack": {}},
    # Table 5: labels known, BatchNorm statistics unknown (no BN prior).
    "realistic": {"threat": {"labels": "known", "bn_stats": "none"},
                  "attack": {"bn": {"name": "none"}, "regularizers": {"bn_prior": None}}},
}


SMOKE: dict[str, Any] = {
    "seed": 0,
    "data": {"name": "mnist-5k", "root": ""},
    "model": {"name": "convnet", "options": {"width": 16}},
    "defenses": SMOKE_DEFENSES,
    "utility": {"num_clients": 4, "rounds": 15, "local_steps": 25, "batch_size": 32, "lr": 0.1, "overhead_pairs": OVERHEAD_PAIRS},
    "attack": {"batch_sizes": [1, 4], "images": 4, "epochs": 2, "iterations": 200, "preset": "huang-eq3",
               "attackers": ["strongest"]},
}


class TradeoffExperiment:
    name = "tradeoff"
    description = "utility-security trade-off of defenses (the paper's Tables 2 and 5)"
    presets: dict[str, dict[str, Any]] = {
        "smoke": SMOKE,
        # Beyond the paper: DP noise, FedAvg local steps, non-IID data, secure aggregation, malicious client.
        "beyond": {**SMOKE, "defenses": BEYOND_ROWS},
        # The paper's MNIST appendix: 6-layer ConvNet without BatchNorm, batch size 1, strongest attack.
        "mnist-appendix": {
            "seed": 0,
            "data": {"name": "mnist-5k", "root": ""},
            "model": {"name": "convnet", "options": {"width": 32}},
            "defenses": MNIST_APPENDIX_DEFENSES,
            "utility": {"num_clients": 4, "rounds": 10, "local_steps": 50, "batch_size": 32, "lr": 0.1, "overhead_pairs": OVERHEAD_PAIRS},
            "attack": {"batch_sizes": [1], "images": 8, "epochs": 5, "iterations": 2000, "preset": "huang-eq3",
                       "attackers": ["strongest"]},
        },
        "paper": {
            "seed": 0,
            "data": {"name": "cifar10", "root": ""},
            "model": {"name": "resnet18", "options": {}},
            "defenses": PAPER_DEFENSES,
            "utility": {"num_clients": 10, "rounds": 200, "local_steps": 50, "batch_size": 128, "lr": 0.1, "overhead_pairs": OVERHEAD_PAIRS},
            "attack": {"batch_sizes": [1, 16, 32], "images": 64, "epochs": 20, "iterations": 10000, "preset": "huang-eq3",
                       "attackers": ["strongest", "realistic"]},
        },
    }

    # -- cells -----------------------------------------------------------
    def cells(self, settings: dict[str, Any]) -> list[Cell]:
        common = {"seed": settings["seed"], "data": settings["data"], "model": settings["model"]}
        cells = []
        for d in settings["defenses"]:
            cells.append(Cell(f"utility/{d['label']}", {**common, "kind": "utility", "stack": d["stack"], **_scenario(d),
                                                       **settings["utility"]}))
        a = settings["attack"]
        for attacker in a["attackers"]:
            for b in a["batch_sizes"]:
                for d in settings["defenses"]:
                    params = {**common, "kind": "attack", "stack": d["stack"], "batch_size": b, "attacker": attacker, **_scenario(d),
                              **{k: v for k, v in a.items() if k not in ("batch_sizes", "attackers")}}
                    cells.append(Cell(f"attack/{attacker}/b{b}/{d['label']}", params))
        return cells

    def run_cell(self, cell: Cell, workdir: Path, ctx: CellContext) -> dict[str, Any]:
        if cell.params["kind"] == "utility":
            return _run_utility(cell.params, workdir, ctx)
        return _run_attack(cell.params, workdir, ctx)

    # -- outputs ---------------------------------------------------------
    def tables(self, settings: dict[str, Any], results: dict[str, dict[str, Any]]) -> list[Table]:
        labels = [d["label"] for d in settings["defenses"]]
        # Each MixUp/InstaHide defense twice: decoded with the keys granted (the paper's upper bound), then without.
        columns = [(d["label"], prefix) for d in settings["defenses"]
                   for prefix in (("", "keyless_") if _encoder(d["stack"]) and not d.get("role") else ("",))]
        tables = []
        for attacker in settings["attack"]["attackers"]:
            table = Table(
                name=f"table_{attacker}",
                title=f"Utility and leakage, {attacker} attacker ({settings['data']['name']}, {settings['model']['name']})",
                columns=["", *[f"{lab}{KEYLESS_SUFFIX if prefix else ''}" for lab, prefix in columns]],
            )
            util = [results.get(f"utility/{lab}", {}) for lab, _ in columns]
            table.rows.append(["Test accuracy (%)", *[_pct(u.get("accuracy")) for u in util]])
            table.rows.append([TIME_ROW, *[_time_cell(u) for u in util]])
            for b in settings["attack"]["batch_sizes"]:
                cells = [(results.get(f"attack/{attacker}/b{b}/{lab}", {}), prefix) for lab, prefix in columns]
                for stat in ("avg", "best", "std"):
                    table.rows.append([f"bs={b} LPIPS {stat}", *[c.get(f"{prefix}lpips_{stat}") for c, prefix in cells]])
                table.rows.append([f"bs={b} recognised", *[c.get(f"{prefix}recognised") for c, prefix in cells]])
                if any(prefix for _, prefix in columns):
                    table.rows.append([f"bs={b} encodings as candidates, LPIPS avg",
                                       *[c.get("encodings_as_candidates_lpips") for c, _ in cells]])
            table.notes.append(TIME_NOTE.format(pairs=settings["utility"].get("overhead_pairs", OVERHEAD_PAIRS)))
            for lab, u in zip(labels, util):
                measured = u.get("overhead") or {}
                if measured and measured.get("examples_defended") != measured.get("examples_plain"):
                    table.notes.append(f"{lab}: {measured['examples_defended']} examples behind a defended update, "
                                       f"{measured['examples_plain']} behind a plain one.")
                if "q1" in measured:
                    table.notes.append(_noise_note(lab, measured))
            table.notes.append("LPIPS (AlexNet) after one-to-one matching; lower means more leakage. Recognised: private "
                               "images the calibrated verdict recognises, of those judged. Encodings as candidates: the "
                               "inverted encodings themselves scored as if decoded, the floor a decode must beat to have "
                               "added anything (on digits a mix whose own coefficient is large already looks like its image).")
            table.notes.append(
                f"Attack: {settings['attack']['preset']}, {settings['attack']['iterations']} iterations, "
                f"{settings['attack']['images']} private images per cell; MixUp/InstaHide columns decode "
                f"{settings['attack']['epochs']} epochs of reconstructed encodings with the mixing keys granted "
                "(the paper's upper bound), and the columns marked" + KEYLESS_SUFFIX + " decode the same encodings "
                "without keys (cone-facet clustering and regression, told the epochs: Carlini et al.'s attacker "
                "without their learned similarity); InstaHide's signs are never granted: scored against |x - c|, "
                "the image up to the sign of each pixel's deviation from the centre c the signs flip around, the "
                "dataset mean by default. Accuracy and time of a" + KEYLESS_SUFFIX + " column are its defense's."
            )
            tables.append(table)
        return tables

    def figures(self, settings: dict[str, Any], results: dict[str, dict[str, Any]], out_dir: Path) -> list[Figure]:
        out_dir.mkdir(parents=True, exist_ok=True)
        b = settings["attack"]["batch_sizes"][0]
        attacker = settings["attack"]["attackers"][0]
        fig = MplFigure(figsize=(6, 4), dpi=120)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for d in settings["defenses"]:
            u = results.get(f"utility/{d['label']}", {})
            a = results.get(f"attack/{attacker}/b{b}/{d['label']}", {})
            if u.get("accuracy") is None or a.get("lpips_avg") is None:
                continue
            ax.scatter(a["lpips_avg"], 100 * u["accuracy"], s=30)
            ax.annotate(d["label"], (a["lpips_avg"], 100 * u["accuracy"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(f"LPIPS avg (batch size {b}, {attacker}); higher = less leakage")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("utility vs privacy of defenses", fontsize=10)
        fig.tight_layout()
        path = out_dir / "tradeoff.png"
        fig.savefig(path)
        return [Figure("tradeoff", "Accuracy vs LPIPS per defense", path)]


def _pct(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 2)


def _time_cell(utility: dict[str, Any]) -> float | str | None:
    """The ratio, or ``~1`` for a ratio below 1 whose pair ratios' middle half spans 1: that 0.96 is
    the machine's noise, and printed bare it would read as a defense cheaper than none."""
    measured = utility.get("overhead") or {}
    if "q1" in measured and measured["ratio"] < 1.0 <= measured["q3"]:
        return f"~1 ({measured['q1']:.2f}\u2013{measured['q3']:.2f})"
    return _round2(utility.get("time_ratio"))


def _round2(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _run_utility(params: dict[str, Any], workdir: Path, ctx: CellContext) -> dict[str, Any]:
    cfg = cell_run_config(params, workdir, {
        "federation": {"num_clients": params["num_clients"], "rounds": params["rounds"], "local_steps": params["local_steps"],
                       "batch_size": params["batch_size"], "lr": params["lr"], "protocol": "fedavg"},
        "tap": {"enabled": False, "ground_truth": False},
    }, params.get("utility_set", []))
    outcome = ctx.simulation()(cfg, quiet=True)
    last = outcome.result.rounds[-1]
    # The FL run's training part (no start-up, no evaluation): kept, but not what the time row shows.
    train_s = sum(r.wall_s - r.eval_s for r in outcome.result.rounds)
    return {"accuracy": last.eval_acc, "test_loss": last.eval_loss, "wall_s": train_s, "run_dir": str(outcome.run_dir),
            **_overhead(cfg, params)}


def _noise_note(label: str, measured: dict[str, Any]) -> str:
    """How far a time ratio stands from 1: the middle half of its pair ratios."""
    q1, q3, ratio = measured["q1"], measured["q3"], measured["ratio"]
    if q1 <= 1.0 <= q3:
        verdict = "no cost measurable above the noise"
    elif q3 < 1.0:
        verdict = "measured cheaper than no defense in most pairs"
    else:
        verdict = "a cost above the noise"
    return f"{label}: time {ratio:.2f}x, middle half of the pair ratios {q1:.2f}\u2013{q3:.2f}: {verdict}."


def _overhead(cfg: RunConfig, params: dict[str, Any]) -> dict[str, Any]:
    """The defenses' and SecAgg+'s cost per client round, measured side by side with neither (:mod:`clients.overhead`)."""
    if not cfg.defenses and not cfg.federation.secagg:
        return {"time_ratio": 1.0 if not params["stack"] and not _scenario(params) else None}
    measured = measure_overhead(cfg, pairs=params.get("overhead_pairs", OVERHEAD_PAIRS))  # a setting: quick test runs take fewer
    return {"time_ratio": measured.ratio, "overhead": measured.as_dict()}


def _recognised(metrics: list[dict[str, Any]]) -> str | None:
    """``recognised/judged`` over the attacks' calibrated verdicts (None where none was judged)."""
    counts = [m["verdict_counts"] for m in metrics if isinstance(m.get("verdict_counts"), dict)]
    if not counts:
        return None
    return f"{sum(c.get('recognised', 0) for c in counts)}/{sum(sum(c.values()) for c in counts)}"


def _summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"lpips_avg": None, "lpips_best": None, "lpips_std": None}
    arr = np.asarray(values, dtype=float)
    return {"lpips_avg": float(arr.mean()), "lpips_best": float(arr.min()), "lpips_std": float(arr.std())}


def _run_attack(params: dict[str, Any], workdir: Path, ctx: CellContext) -> dict[str, Any]:
    b = params["batch_size"]
    encoder = _encoder(params["stack"])
    attacker = ATTACKERS[params["attacker"]]
    overrides = deep_merge(huang_eq3_for_defense(_defense_kind(params["stack"])), attacker["attack"])
    overrides["iterations"] = params["iterations"]
    if params.get("role"):
        return _run_role_attack(params, workdir, overrides, attacker["threat"], ctx)
    private = math.ceil(max(params["images"], b) / b) * b
    rounds = (private // b) * (params["epochs"] if encoder else 1)
    cfg = cell_run_config(params, workdir, {
        "federation": {"num_clients": 1, "protocol": "fedsgd", "batch_size": b, "rounds": rounds},
        "data": {"max_train": private, "max_test": 64},
    }, params.get("attack_set", []))
    run_dir = ctx.simulation()(cfg, quiet=True).run_dir
    with TrafficLog.open(run_dir) as log:
        updates = [m.id for m in client_updates(log)]
    if encoder:
        return {"run_dir": str(run_dir), "updates": len(updates),
                **_decode(run_dir, updates, params, overrides, dict(attacker["threat"]), ctx)}
    per_image: list[float] = []
    attacks, verdicts = [], []
    for i, msg_id in enumerate(updates, 1):
        ctx.progress(f"  attack {i}/{len(updates)} (message {msg_id})")
        outcome = run_job(run_dir, AttackTarget("update", None, (msg_id,)), params["preset"], attack_overrides=overrides,
                          threat=dict(attacker["threat"]))
        attacks.append(str(outcome.out_dir))
        per_image += outcome.metrics.get("lpips", [])
        verdicts.append(outcome.metrics)
    return {"run_dir": str(run_dir), "attacks": attacks, "updates": len(updates), **_summary(per_image),
            "recognised": _recognised(verdicts)}


def _decode(run_dir: Path, updates: list[int], params: dict[str, Any], overrides: dict[str, Any], threat: dict[str, Any],
            ctx: CellContext) -> dict[str, Any]:
    """Invert the client's updates over the cell's epochs once and decode them twice: with the mixing keys
    granted (the paper's upper bound: ``lpips_*``) and without them (``keyless_lpips_*``, told the epochs).
    InstaHide's signs are never granted: both decode ``|x~ - c|`` and are scored against ``|x - c|``."""
    ctx.progress(f"  invert {len(updates)} updates, decode with and without keys")
    target = AttackTarget("decode", None, tuple(updates), decode=("keys", "keyless"), epochs=params["epochs"])
    outcome = run_decode_job(run_dir, target, params["preset"], attack_overrides=overrides,
                             threat={**threat, "mixing_keys": True})
    decoders = outcome.metrics["decoders"]
    keyless = decoders["keyless"]
    return {
        **{f"lpips_{stat}": decoders["keys"].get(f"lpips_{stat}") for stat in ("avg", "best", "std")},
        "identifiable": decoders["keys"].get("identifiable"), "private_images": outcome.metrics.get("private_images_true"),
        **{f"keyless_lpips_{stat}": keyless.get(f"lpips_{stat}") for stat in ("avg", "best", "std")},
        "keyless_identifiable": keyless.get("identifiable"), "keyless_verdicts": keyless.get("verdict_counts"),
        "recognised": _recognised([decoders["keys"]]), "keyless_recognised": _recognised([keyless]),
        "encodings_as_candidates_lpips": outcome.metrics["encodings_as_candidates"]["lpips_avg"],
        "inversion_psnr": outcome.metrics["inversion"]["psnr_avg"],
        "attacks": [str(run_dir / "attacks" / d["folder"]) for d in decoders.values()],
    }


def _run_role_attack(params: dict[str, Any], workdir: Path, overrides: dict[str, Any], threat: dict[str, Any],
                     ctx: CellContext) -> dict[str, Any]:
    """An adversary role attacks during a run of ``clients`` participants (e.g. the
    malicious client or, under secure aggregation, the curious server: aggregates)."""
    b, clients = params["batch_size"], params.get("clients", 3)
    grants = {k: v for k, v in threat.items() if k != "bn_stats"}  # no private batch BN stats for aggregates
    # Aggregates have no single private batch: no BN statistics to grant, no BN prior.
    overrides = deep_merge(overrides, ATTACKERS["realistic"]["attack"])
    cfg = cell_run_config(params, workdir, {
        "federation": {"num_clients": clients, "protocol": "fedsgd", "batch_size": b, "rounds": 3},
        "data": {"max_train": clients * max(params["images"], b), "max_test": 64},
        "adversary": {"role": params["role"], "preset": params["preset"], "attack": overrides,
                      "threat": {**grants, "bn_stats": "none"}, "workers": 1},
    }, params.get("attack_set", []))
    ctx.progress(f"  {params['role']} attacking during the run")
    run_dir = ctx.simulation()(cfg, quiet=True).run_dir
    jobs = JobBook(run_dir).jobs()
    failed = [j for j in jobs if j.state != "done"]
    if failed:  # a failed cell is not cached; it runs again next time
        raise RuntimeError(f"{params['role']}: {len(failed)} of {len(jobs)} attacks failed: "
                           f"{(failed[0].error or failed[0].state).splitlines()[0]}")
    per_image = [v for j in jobs if j.metrics for v in j.metrics.get("lpips", [])]
    return {"run_dir": str(run_dir), "attacks": [j.out_dir for j in jobs], "updates": len(jobs),
            "failed": sum(j.state != "done" for j in jobs), **_summary(per_image),
            "recognised": _recognised([j.metrics for j in jobs if j.metrics])}


register(TradeoffExperiment)
