"""One attack job, from the traffic log to the outputs on disk: the one runner every attack goes through.

The attacker's inputs come from the traffic log and the deployment card
(:mod:`adversary.observation`); the evaluator (:mod:`adversary.evaluation`) opens the
ground truth once, to grant what the threat model allows and to score afterwards.
The method comes from the one registry of :mod:`adversary.methods` (an optimisation
preset, or a malicious server's recovery), and every job writes the same files
(:mod:`adversary.outputs`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

import torch

from adversary.attacks import PRESETS, AttackInputs, audit_preset, preset_config
from adversary.evaluation import Evaluator, GrantError, threat_model_for
from adversary.malicious.record import ServerRecord
from adversary.methods import AttackMethod, Reconstruction, build_method
from adversary.observation import ModelFactory, Observation, build_observation, load_factory
from adversary.outputs import ATTACK_JSON, attack_dir, write_attack_outputs
from adversary.progress import PROGRESS_LOG, ProgressLog
from adversary.roles.base import AttackTarget
from adversary.statement import AuditStatement
from adversary.traffic_log import TrafficLog
from fl_sim.deployment import load_card
from fl_sim.devices import device_label, resolve_device
from fl_sim.threat import Capability, ThreatModel

Progress = Callable[[int, float], None]


@dataclass
class AttackOutcome:
    out_dir: Path
    metrics: dict[str, Any]


DEFAULT_PRESET = "inverting-gradients"


def aligned_labels(preset: str, overrides: dict[str, Any] | None, threat: dict[str, Any] | None, num_images: int | None,
                   num_classes: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """``attack.labels`` (how the attack gets labels) and ``threat.labels`` (whether it is granted them) agree:
    a label strategy implies its grant, and a grant without labels picks a strategy that infers them
    (iDLG for one image, Yin et al.'s for distinct labels, else counting them, Geng et al.)."""
    overrides, threat = dict(overrides or {}), dict(threat or {})
    chosen = overrides.get("labels")
    name = chosen if isinstance(chosen, str) else (chosen or {}).get("name")
    if name is not None and "labels" not in threat:
        threat["labels"] = {"known": "known", "joint": "unknown"}.get(name, "infer")
    elif name is None and threat.get("labels") in ("infer", "unknown") and preset_config(preset)["labels"]["name"] == "known":
        pick = "idlg" if num_images == 1 else "yin" if num_images is not None and num_images <= num_classes else "count-aware"
        overrides["labels"] = {"name": pick}
    return overrides, threat


@dataclass
class PreparedAttack:
    """One observation's attack, ready to run: the method, the threat model stating every grant, and the
    inputs the evaluator granted (``overrides``: the attack settings after the label strategy was aligned)."""

    obs: Observation
    method: AttackMethod
    threat_model: ThreatModel
    inputs: AttackInputs
    overrides: dict[str, Any]

    def run(self, progress: Progress | None, device: torch.device) -> Reconstruction:
        """On ``device`` where the method gains from it (else the CPU); the result back on the CPU."""
        where = self.where(device)
        return self.method.run(self.obs, self.inputs.to(where), self.threat_model, progress).cpu()

    def where(self, device: torch.device) -> torch.device:
        return device if self.method.accelerated else resolve_device("cpu")


class Execution(Protocol):
    """Runs a prepared attack's optimisation somewhere (this process, a Ray worker on another node): the
    reconstruction and the label of the device it ran on. Everything before and after it (reading the run
    directory, granting, scoring, writing) stays with the job."""

    def __call__(self, prepared: PreparedAttack, progress: Progress | None) -> tuple[Reconstruction, str]: ...


@dataclass(frozen=True)
class LocalExecution:
    """In this process, on ``device`` (``auto``: this process's GPU if it has one)."""

    device: str = "auto"

    def __call__(self, prepared: PreparedAttack, progress: Progress | None) -> tuple[Reconstruction, str]:
        where = prepared.where(resolve_device(self.device))
        return prepared.run(progress, where), device_label(where)


def prepare_attack(obs: Observation, evaluator: Evaluator, name: str, preset: str, overrides: dict[str, Any] | None,
                   threat: dict[str, Any] | None) -> PreparedAttack:
    """The method ``name`` (a preset, or a malicious server's recovery) against ``obs``, its grants checked
    before anything runs."""
    if name == preset and preset in PRESETS:
        overrides, threat = aligned_labels(preset, overrides, threat, threat_model_for(obs, threat).num_images, obs.num_classes)
    method = build_method(name, preset=preset, overrides=overrides)
    threat_model = threat_model_for(obs, threat)
    if Capability.NUM_IMAGES in method.requirements() and threat_model.num_images is None:
        raise GrantError("threat.num_images: the traffic does not reveal the batch size; grant it (--set threat.num_images=N)")
    inputs = evaluator.grant(obs, threat_model)
    method.check(inputs, threat_model)
    return PreparedAttack(obs, method, threat_model, inputs, dict(overrides or {}))


def _label(obs: Observation) -> str:
    return f"m{obs.message}" if obs.source.get("kind") == "reply" else f"agg{len(obs.aggregate_of)}"


def run_job(
    run_dir: str | Path,
    target: AttackTarget,
    preset: str | None,
    *,
    attack_overrides: dict[str, Any] | None = None,
    threat: dict[str, Any] | None = None,
    progress: Progress | None = None,
    audit: AuditStatement | None = None,
    factory: ModelFactory | None = None,
    warn: Callable[[str], None] | None = None,
    echo: TextIO | None = None,
    device: str = "auto",
    execution: Execution | None = None,
) -> AttackOutcome:
    """Attack one target (a client update, an aggregate, a malicious server's recovery) and write its outputs.

    ``preset`` names the method (a malicious target names its strategy's recovery, which may fall
    back to optimising with ``preset``); ``audit`` is what the command line states about an audited
    app (given, the code the run directory names is imported only as :meth:`AuditStatement.vouch`
    allows; None, as in the run's own adversary, the card the run wrote is used as it is); ``factory``
    builds its model (else the card's factory is imported). Before the attack runs, the
    attacker's model of the client is replayed on the true batch where one is known (the recipe check);
    ``warn`` hears when it is wrong. Progress lines go to ``RUN_DIR/attacks.log`` and ``echo``.
    ``device``: where an optimisation attack runs (``auto``: this process's GPU if it has one); the
    inputs are built, and the result scored, on the CPU. ``execution``: where else it runs (a Ray worker:
    the rest of the job stays in this process, which alone reads and writes the run directory)."""
    run_dir = Path(run_dir)
    execution = execution or LocalExecution(device)
    card = load_card(run_dir)
    if audit is not None:  # a command line's statement: the run directory's own code refs need vouching for
        for note in audit.vouch(card):
            if warn is not None:
                warn(note)
        card = audit.card(card)
        audit.check(card)
    preset = preset or (audit_preset(card.recipe.optimizer) if card.origin == "audit" else DEFAULT_PRESET)
    server = ServerRecord(run_dir) if target.kind == "malicious" else None
    with TrafficLog.open(run_dir) as log:
        obs = build_observation(log, card, target, factory=factory, server=server)
    client_data = None
    if audit is not None and audit.client_data:
        client_data = load_factory(audit.client_data, audit.root or (card.model.factory_root if card.model else None),
                                   option="--client-data")
    evaluator = Evaluator.open(run_dir)
    prepared = prepare_attack(obs, evaluator, target.strategy or preset, preset, attack_overrides, threat)
    method, threat_model, attack_overrides = prepared.method, prepared.threat_model, prepared.overrides
    checked = evaluator.recipe_check(obs, prepared.inputs, threat_model, client_data) if not obs.refused else {}
    if checked.get("recipe_warning") and warn is not None:
        warn(checked["recipe_warning"])
    logged = ProgressLog(run_dir / PROGRESS_LOG, f"msg {obs.message} round {obs.round} {method.name}",
                         method.total_iterations, echo=echo, inner=progress)
    recon, ran_on = execution(prepared, logged)

    assessed = evaluator.assess(obs, method, recon, client_data, threat_model.num_images)
    metrics = {**checked, **assessed.metrics}
    summary = {
        "message": obs.message,
        "target": {"kind": target.kind, "messages": list(target.messages), "round": obs.round,
                   "aggregate_of": list(obs.aggregate_of)},
        "round": obs.round,
        "client_node": None if obs.aggregate_of else obs.client,
        "method": method.name,
        "preset": preset,
        **({"strategy": target.strategy} if target.strategy else {}),
        **obs.source,
        "protocol": card.protocol,
        "device": ran_on,
        **recon.info,
        **metrics,
    }
    out_dir = attack_dir(run_dir, obs.round, _label(obs), method.name)
    write_attack_outputs(
        out_dir,
        images=recon.images,
        shown=assessed.shown,
        labels=recon.labels,
        loss_curve=recon.loss_curve,
        title=f"{method.name} on message {obs.message} (round {obs.round})",
        metrics=summary,
        config={
            "method": method.name,
            "preset": preset,
            "resolved": getattr(method, "resolved", None),
            "overrides": attack_overrides or {},
            "threat_model": threat_model.model_dump(),
            "update_kind": obs.update_kind,
            "message": obs.message,
            "target": target.to_json(),
            "info": obs.info,
        },
        originals=assessed.compare,
        originals_below=assessed.compare_below,
    )
    return AttackOutcome(out_dir, summary)


__all__ = ["ATTACK_JSON", "AttackOutcome", "AuditStatement", "Execution", "LocalExecution", "run_job"]
