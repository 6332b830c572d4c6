"""The run report as one self-contained HTML page, through the experiments' renderer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adversary.feed import verdict_phrase
from app.report.charts import traffic_chart, training_curves
from app.report.facts import AttackResult, RunFacts
from app.report.story import summary_lines
from experiments.base import Figure, Table
from experiments.report import Section, write_html_report

FIGURES_DIR = "report"  # RUN_DIR/report/: the charts, as PNG files beside the page that embeds them
THREAT_SHOWN = ("labels", "bn_stats", "num_images", "local_steps", "local_lr", "local_batch_size", "mixing_keys", "control")
TRAFFIC_ROWS = 12  # rounds listed one by one; longer runs get per-direction means


def _brief(facts: RunFacts) -> Table:
    rows: list[list[Any]] = []
    if facts.config is not None:
        c = facts.config
        fed = c.federation
        rows += [
            ["data", f"{c.data.name} ({c.data.partition} partition)"],
            ["model", c.model.name + (f" ({c.model.norm} norm)" if c.model.name == "resnet18" else "")],
            ["protocol", f"{fed.protocol}, batch {fed.batch_size}, lr {fed.lr}"
             + (f", {fed.local_steps} local steps" if fed.protocol == "fedavg" else "")],
            ["clients", f"{fed.num_clients}, {fed.sampled_per_round} per round, {fed.rounds} rounds"
             + (", FedBN" if fed.fedbn and c.model.name == "resnet18" and c.model.norm == "batch" else "")
             + (", SecAgg+" if fed.secagg else "")],
            ["engine", c.engine.name],
            ["defenses", "; ".join(f"{d.label()} on " + ("every client" if d.partitions is None else
                                                          "partition " + ", ".join(map(str, d.partitions)))
                                   for d in c.defenses) or "none"],
        ]
        adv = c.adversary
        if adv.active:
            options = ", ".join(f"{k}={v}" for k, v in adv.options.items())
            rows.append(["adversary", f"{adv.role}" + (f" ({options})" if options else "")])
            rows.append(["attack", f"{adv.preset}" + "".join(f", {k}={v}" for k, v in adv.attack.items())])
            threat = adv.threat.chosen()
            rows.append(["threat model", ", ".join(f"{k}={v}" for k, v in threat.items()) or "defaults (see each attack)"])
        else:
            rows.append(["adversary", "none during the run"])
    else:
        r = facts.resolved
        app = r.get("app")
        rows += [
            ["audited app", app if isinstance(app, str) else str(app)],
            ["clients", f"{r.get('num_supernodes')} simulated supernodes"],
            ["engine", str(r.get("engine"))],
            ["tap", str(r.get("tap"))],
        ]
        statement = r.get("statement") if isinstance(r.get("statement"), dict) else {}
        for key, value in statement.items():
            rows.append([f"stated {key}", str(value)])
        adv = r.get("adversary")
        rows.append(["adversary", adv.get("role", "none") if isinstance(adv, dict) else "none during the run"])
    return Table("run", "What ran", ["setting", "value"], rows)


def _traffic_table(rows: list[tuple[int | None, str, int, int]]) -> Table:
    rounds = sorted({r for r, *_ in rows if r is not None})
    columns = ["round", "direction", "messages", "MB on the wire"]
    if len(rounds) <= TRAFFIC_ROWS:
        body = [["outside rounds" if r is None else r, d, n, size / 1e6] for r, d, n, size in rows]
        return Table("traffic", "Messages and bytes per round and direction", columns, body)
    body = []
    for direction in ("down", "up"):
        mine = [(n, size) for r, d, n, size in rows if d == direction and r is not None]
        if mine:
            body.append([f"mean of {len(rounds)}", direction, sum(n for n, _ in mine) / len(rounds),
                         sum(s for _, s in mine) / len(rounds) / 1e6])
    total = sum(size for *_, size in rows)
    return Table("traffic", "Messages and bytes per round and direction (means; the chart shows every round)",
                 columns, body, notes=[f"{sum(n for _, _, n, _ in rows)} messages, {total / 1e6:,.1f} MB in all"])


def _levels(refs: dict[str, Any], metric: str, keys: tuple[tuple[str, str], ...]) -> str:
    levels = refs.get(metric) if isinstance(refs, dict) else None
    if not isinstance(levels, dict):
        return "\u2013"
    return "; ".join(f"{label} {levels[k]:.3g}" for k, label in keys if isinstance(levels.get(k), (int, float)))


def _mean_distance(metrics: dict[str, Any], metric: str) -> float | None:
    values = [v["metrics"][metric]["distance"] for v in metrics.get("verdicts", [])
              if isinstance(v, dict) and isinstance(v.get("metrics", {}).get(metric), dict)]
    return sum(values) / len(values) if values else None


def _attack_table(attack: AttackResult) -> Table:
    m = attack.metrics
    refs = m.get("references", {})
    real = (("unrelated_median", "different real images"), ("nearest_median", "nearest other real image"),
            ("noise_median", "noise"))
    rows: list[list[Any]] = [["verdict", verdict_phrase(m), "recognised: closer to its image than any other real image is"]]
    if "lpips_avg" in m:
        rows.append(["LPIPS, matched (lower is closer)", m["lpips_avg"], _levels(refs, "lpips", real)])
    elif "nearest_lpips_avg" in m:
        rows.append(["LPIPS to the nearest real image", m["nearest_lpips_avg"], _levels(refs, "lpips", real)])
    correlation = _mean_distance(m, "correlation")
    if correlation is not None:
        rows.append(["pixel correlation distance", correlation, _levels(refs, "correlation", real)])
    score = (("unrelated_median", "different real images"), ("noise_median", "noise"))
    if "psnr_avg" in m:
        rows.append(["PSNR dB (higher is closer)", m["psnr_avg"], _levels(refs, "psnr", score)])
    if "ssim_avg" in m:
        rows.append(["SSIM (higher is closer)", m["ssim_avg"], _levels(refs, "ssim", score)])
    if "label_accuracy" in m:
        rows.append(["labels recovered", f"{m['label_accuracy']:.0%}", "\u2013"])
    if "recipe_error" in m:
        rows.append(["recipe error (the attacker's model of the client)", m["recipe_error"],
                     "below 1% means the attacker simulates the client right"])
    if attack.threat:
        granted = ", ".join(f"{k}={attack.threat[k]}" for k in THREAT_SHOWN if k in attack.threat)
        rows.append(["threat model", granted, "what the attacker was granted or read off the traffic"])
    timing = m.get("timing") if isinstance(m.get("timing"), dict) else {}
    cost = f"{m.get('preset', m.get('method', '?'))}"
    if timing:
        cost += f", {timing.get('iterations', '?')} iterations in {timing.get('total_s', 0):.0f} s"
    rows.append(["attack", cost, "\u2013"])
    return Table(f"attack-{attack.folder}", "Scores (means over the update's images) and their reference levels",
                 ["", "value", "reference levels (medians)"], rows)


def _attack_section(attack: AttackResult) -> Section:
    m = attack.metrics
    figures = []
    if attack.grid is not None:
        caption = ("private images (top) over their matched reconstructions (bottom)" if "perm" in m else
                   "reconstructions (top) over the nearest real image of the client's data (bottom)")
        figures.append(Figure(f"grid-{attack.folder}", caption, attack.grid))
    if attack.loss is not None:
        figures.append(Figure(f"loss-{attack.folder}", "the attack's objective per iteration", attack.loss))
    title = f"Attack: round {m.get('round', '?')}, {attack.client}"
    paragraphs = [f"Outputs: attacks/{attack.folder}/" + (f" (job {attack.job})" if attack.job is not None else "")]
    if m.get("recipe_warning"):
        paragraphs.append(f"Warning: {m['recipe_warning']}")
    return Section(f"attack-{attack.folder}", title, paragraphs, [_attack_table(attack)], figures)


def _jobs_section(facts: RunFacts) -> Section | None:
    jobs = facts.unfinished + facts.failed
    if not jobs:
        return None
    rows = [[j.id, j.state, j.target.round, facts.describe(j.target.client),
             (j.error or "").strip().splitlines()[0] if j.error else f"fl-sim attack {facts.run_dir} --resume"]
            for j in sorted(jobs, key=lambda j: j.id)]
    return Section("jobs", "Attacks not finished", tables=[Table("jobs", "Pending, running and failed attacks",
                                                                 ["job", "state", "round", "client", "note"], rows)])


def write_run_report(facts: RunFacts, summary: list[str] | None = None) -> Path:
    """``RUN_DIR/report.html`` (charts also as PNGs in ``RUN_DIR/report/``) under ``summary`` (default: the
    facts' :func:`summary_lines`); returns the page's path."""
    figures_dir = facts.run_dir / FIGURES_DIR
    figures_dir.mkdir(exist_ok=True)
    sections = []
    gallery = [Figure(f"glance-{a.folder}", f"round {a.metrics.get('round', '?')}, {a.client}: {verdict_phrase(a.metrics)}",
                      a.grid) for a in facts.attacks if a.grid is not None]
    if gallery:
        sections.append(Section("glance", "What leaked, at a glance", ["Each grid: the client's private images above "
                                "what the attacker reconstructed from one intercepted update (details below)."],
                                figures=gallery))
    sections.append(Section("run", "The run", tables=[_brief(facts)]))
    curves = training_curves(facts.rounds, figures_dir / "training.png")
    sections.append(Section("training", "Training", ["No round metrics were recorded."] if curves is None else [],
                            figures=[Figure("training", "test accuracy and losses per round", curves)] if curves else []))
    if facts.traffic is None:
        sections.append(Section("traffic", "Traffic", ["No traffic log (the tap was off)."]))
    else:
        chart = traffic_chart(facts.traffic, figures_dir / "traffic.png")
        sections.append(Section("traffic", "Traffic", tables=[_traffic_table(facts.traffic)],
                                figures=[Figure("traffic", "bytes on the wire per round and direction", chart)] if chart else []))
    if facts.attacks:
        sections += [_attack_section(a) for a in facts.attacks]
    jobs = _jobs_section(facts)
    if jobs is not None:
        sections.append(jobs)
    if facts.notes:
        sections.append(Section("notes", "What could not be read", facts.notes))
    title = f"Privacy report: {facts.run_dir.name}"
    return write_html_report(facts.run_dir, title, [], [], settings=facts.resolved, sections=sections,
                             lead=summary if summary is not None else summary_lines(facts))
