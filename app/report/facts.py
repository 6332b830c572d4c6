"""Everything a run report says, read from a run directory that may be someone else's.

A run directory is untrusted input: its files are parsed as data (JSON, SQLite, PNG bytes), never
imported or unpickled, and nothing is opened by a path written inside it. Attack outputs are found
by listing ``RUN_DIR/attacks/`` (plain folders, no links); the job book's ``out_dir`` only names
which of those folders a job wrote.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

import clients.defenses  # noqa: F401  (registers the defenses a run's config names)
from adversary.feed import Describe, client_namer
from adversary.jobs import Job, JobBook
from adversary.outputs import ATTACK_JSON, ATTACKS_DIR, GRID_PNG, LOSS_PNG, METRICS_JSON
from adversary.traffic_log import TrafficLog, TrafficLogError
from adversary.traffic_stats import round_metrics, traffic_by_round
from app.wiring import defense_labels, partition_of_node
from fl_sim.config import ConfigError, RunConfig, config_from_json
from fl_sim.rundir import CONFIG_JSON, METRICS_JSONL, SIMULATION_JSON

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ReportError(Exception):
    """A run directory the report cannot read; one line naming the file."""


@dataclass
class AttackResult:
    """One attack's outputs: its metrics and the PNGs it drew (None where missing or not a PNG)."""

    folder: str
    metrics: dict[str, Any]
    grid: Path | None
    loss: Path | None
    client: str
    job: int | None = None
    threat: dict[str, Any] = field(default_factory=dict)  # the resolved threat model, from attack.json


@dataclass
class RunFacts:
    run_dir: Path
    kind: str  # "simulation" or "audit"
    resolved: dict[str, Any]  # config.json as written
    config: RunConfig | None  # a simulation's validated config
    rounds: list[dict[str, Any]]  # per round: round, train_loss, eval_acc, eval_loss (None where not evaluated)
    traffic: list[tuple[int | None, str, int, int]] | None  # None: no traffic log
    attacks: list[AttackResult] = field(default_factory=list)
    unfinished: list[Job] = field(default_factory=list)
    failed: list[Job] = field(default_factory=list)
    partition_of: dict[int, int] = field(default_factory=dict)  # node id -> partition (simulation bookkeeping)
    notes: list[str] = field(default_factory=list)  # what could not be read, said in the report

    @property
    def describe(self) -> Describe:
        return client_namer(self.partition_of, defense_labels(self.config) if self.config is not None else None)

    def defenses_of(self, node: int | None) -> list[str] | None:
        """The defenses a simulated client applies (labels); None where the run does not say (audits)."""
        if self.config is None or node not in self.partition_of:
            return None
        return defense_labels(self.config)(self.partition_of[node])


def _json_file(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"RUN_DIR: {path.parent} has no {path.name}; is it a run directory of fl-sim run or fl-sim audit?") from None
    except (UnicodeDecodeError, json.JSONDecodeError, OSError) as exc:
        raise ReportError(f"RUN_DIR: {path} is not a readable {what} ({type(exc).__name__})") from None


def _plain_file(folder: Path, name: str) -> Path | None:
    """``folder/name`` if it is a regular file inside ``folder`` (no link)."""
    path = folder / name
    return path if path.is_file() and not path.is_symlink() else None


def _png(folder: Path, name: str) -> Path | None:
    path = _plain_file(folder, name)
    if path is None:
        return None
    with path.open("rb") as fh:
        return path if fh.read(len(PNG_MAGIC)) == PNG_MAGIC else None


def _simulation_rounds(run_dir: Path, notes: list[str]) -> list[dict[str, Any]]:
    path = _plain_file(run_dir, METRICS_JSONL)
    if path is None:
        return []
    rounds = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        try:
            row = json.loads(line)
            rounds.append({"round": int(row["round"]), "train_loss": _num(row.get("train_loss")),
                           "eval_acc": _num(row.get("eval_acc")), "eval_loss": _num(row.get("eval_loss"))})
        except (ValueError, KeyError, TypeError):
            notes.append(f"{METRICS_JSONL} line {number} is not a round record; skipped")
    return rounds


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _audit_rounds(messages: list[Any]) -> list[dict[str, Any]]:
    """An audited app's curve: the means its clients reported (a train loss, an accuracy) per round."""
    by_round: dict[int, dict[str, Any]] = {}
    for rnd, kind, _replies, means in round_metrics(messages):
        row = by_round.setdefault(rnd, {"round": rnd, "train_loss": None, "eval_acc": None, "eval_loss": None})
        for key, value in means.items():
            name = key.lower()
            if kind == "train" and "loss" in name and row["train_loss"] is None:
                row["train_loss"] = value
            elif kind == "evaluate" and "acc" in name and row["eval_acc"] is None:
                row["eval_acc"] = value
            elif kind == "evaluate" and "loss" in name and row["eval_loss"] is None:
                row["eval_loss"] = value
    return [by_round[r] for r in sorted(by_round)]


def _audit_partitions(run_dir: Path) -> dict[int, int]:
    path = _plain_file(run_dir, SIMULATION_JSON)
    try:
        return {int(k): int(v) for k, v in json.loads(path.read_text())["partition_of_node"].items()} if path else {}
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        return {}


def _jobs(run_dir: Path, notes: list[str]) -> list[Job]:
    if not JobBook.exists(run_dir):
        return []
    try:
        book = JobBook(run_dir)
        try:
            return book.jobs()
        finally:
            book.close()
    except Exception as exc:  # a damaged book: the report still shows what the attack folders hold
        notes.append(f"the adversary's job book could not be read ({type(exc).__name__}); jobs not listed")
        return []


def _attacks(run_dir: Path, jobs: list[Job], describe: Describe, notes: list[str]) -> list[AttackResult]:
    root = run_dir / ATTACKS_DIR
    if not root.is_dir() or root.is_symlink():
        return []
    job_of = {Path(j.out_dir).name: j.id for j in jobs if j.out_dir}
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
        path = _plain_file(folder, METRICS_JSON)
        try:
            metrics = json.loads(path.read_text(encoding="utf-8")) if path else None
        except (UnicodeDecodeError, json.JSONDecodeError, OSError):
            metrics = None
        if not isinstance(metrics, dict):
            notes.append(f"attacks/{folder.name} has no readable {METRICS_JSON}; skipped")
            continue
        client = metrics.get("client_node")
        out.append(AttackResult(folder.name, metrics, _png(folder, GRID_PNG), _png(folder, LOSS_PNG),
                                describe(client if isinstance(client, int) else None), job_of.get(folder.name),
                                _threat_model(folder)))
    return sorted(out, key=lambda a: (_round_of(a), a.client, a.folder))


def _threat_model(folder: Path) -> dict[str, Any]:
    path = _plain_file(folder, ATTACK_JSON)
    try:
        threat = json.loads(path.read_text(encoding="utf-8")).get("threat_model") if path else None
    except (UnicodeDecodeError, json.JSONDecodeError, OSError, AttributeError):
        threat = None
    return {k: v for k, v in threat.items() if isinstance(v, (str, int, float, bool))} if isinstance(threat, dict) else {}


def _round_of(attack: AttackResult) -> int:
    value = attack.metrics.get("round")
    return value if isinstance(value, int) else -1


def read_run(run_dir: str | Path) -> RunFacts:
    """The facts of a run directory, or :class:`ReportError` naming what is missing or broken."""
    path = Path(run_dir)
    if not path.is_dir():
        raise ReportError(f"RUN_DIR: {run_dir} is not a directory")
    resolved = _json_file(path / CONFIG_JSON, "config")
    if not isinstance(resolved, dict):
        raise ReportError(f"RUN_DIR: {path / CONFIG_JSON} is not a config (expected a JSON object)")
    notes: list[str] = []
    messages = None
    try:
        with TrafficLog.open(path) as log:
            messages = log.messages()
    except TrafficLogError:
        messages = None
    except Exception as exc:  # a damaged index: say so, report the rest
        notes.append(f"the traffic log could not be read ({type(exc).__name__})")
    if resolved.get("kind") == "audit":
        kind, config, partition_of = "audit", None, _audit_partitions(path)
        rounds = _audit_rounds(messages or [])
    else:
        try:
            config = config_from_json(json.dumps(resolved))
        except (ConfigError, ValidationError, ValueError) as exc:
            raise ReportError(f"RUN_DIR: {path / CONFIG_JSON} is not a valid run config ({str(exc).splitlines()[0]})") from None
        kind, partition_of = "simulation", partition_of_node(config)
        rounds = _simulation_rounds(path, notes)
    jobs = _jobs(path, notes)
    facts = RunFacts(
        run_dir=path,
        kind=kind,
        resolved=resolved,
        config=config,
        rounds=rounds,
        traffic=traffic_by_round(messages) if messages is not None else None,
        unfinished=[j for j in jobs if j.state in ("pending", "running")],
        failed=[j for j in jobs if j.state == "failed"],
        partition_of=partition_of,
        notes=notes,
    )
    facts.attacks = _attacks(path, jobs, facts.describe, notes)
    return facts
