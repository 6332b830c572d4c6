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
from typing import Any

from adversary.evaluation import Evaluator, GrantError, threat_model_for
from adversary.malicious.record import ServerRecord
from adversary.methods import build_method
from adversary.observation import ModelFactory, Observation, build_observation, load_factory
from adversary.outputs import ATTACK_JSON, attack_dir, write_attack_outputs
from adversary.roles.base import AttackTarget
from adversary.traffic_log import TrafficLog
from fl_sim.deployment import DeploymentCard, load_card
from fl_sim.threat import Capability

Progress = Callable[[int, float], None]


@dataclass
class AttackOutcome:
    out_dir: Path
    metrics: dict[str, Any]


@dataclass(frozen=True)
class AuditStatement:
    """What the command line states about an audited app: its model, what clients send, whose data to score on."""

    factory: str | None = None  # module:attr
    input_shape: tuple[int, int, int] | None = None
    update_kind: str | None = None
    client_data: str | None = None  # module:fn(partition, num_partitions) -> images

    def card(self, card: DeploymentCard) -> DeploymentCard:
        """The audit's card with what the command line states on top."""
        model = {k: v for k, v in (("factory", self.factory), ("input_shape", self.input_shape)) if v is not None}
        updates: dict[str, Any] = {"model": model} if model else {}
        if self.update_kind is not None:
            updates["update_kind"] = self.update_kind
        return card.with_updates(**updates) if updates else card


def _label(obs: Observation) -> str:
    return f"m{obs.message}" if obs.source.get("kind") == "reply" else f"agg{len(obs.aggregate_of)}"


def run_job(
    run_dir: str | Path,
    target: AttackTarget,
    preset: str,
    *,
    attack_overrides: dict[str, Any] | None = None,
    threat: dict[str, Any] | None = None,
    progress: Progress | None = None,
    audit: AuditStatement | None = None,
    factory: ModelFactory | None = None,
) -> AttackOutcome:
    """Attack one target (a client update, an aggregate, a malicious server's recovery) and write its outputs.

    ``preset`` names the method (a malicious target names its strategy's recovery, which may fall
    back to optimising with ``preset``); ``audit`` is what the command line states about an audited
    app; ``factory`` builds its model (else the card's factory is imported)."""
    run_dir = Path(run_dir)
    card = load_card(run_dir)
    if audit is not None:
        card = audit.card(card)
    server = ServerRecord(run_dir) if target.kind == "malicious" else None
    with TrafficLog.open(run_dir) as log:
        obs = build_observation(log, card, target, factory=factory, server=server)
    method = build_method(target.strategy or preset, preset=preset, overrides=attack_overrides)
    threat_model = threat_model_for(obs, threat)
    if Capability.NUM_IMAGES in method.requirements() and threat_model.num_images is None:
        raise GrantError("threat.num_images: the traffic does not reveal the batch size; grant it (--set threat.num_images=N)")
    evaluator = Evaluator.open(run_dir)
    inputs = evaluator.grant(obs, threat_model)
    method.check(inputs, threat_model)
    recon = method.run(obs, inputs, threat_model, progress)

    metrics = evaluator.score(obs, method, recon)
    if obs.foreign:
        client_data = None
        if audit is not None and audit.client_data:
            client_data = load_factory(audit.client_data, card.model.factory_root if card.model else None)
        metrics.update(evaluator.score_foreign(obs, recon.images, client_data))
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
        **recon.info,
        **metrics,
    }
    found = evaluator.originals(obs, method, recon)
    out_dir = attack_dir(run_dir, obs.round, _label(obs), method.name)
    write_attack_outputs(
        out_dir,
        images=recon.images,
        shown=obs.unsigned(recon.images),
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
        originals=found[0] if found is not None else None,
    )
    return AttackOutcome(out_dir, summary)


__all__ = ["ATTACK_JSON", "AttackOutcome", "AuditStatement", "run_job"]
