"""A decode job: a MixUp/InstaHide client's updates over T epochs, inverted, then decoded.

The second stage of the paper's attack on encoding defenses (Carlini et al.'s decode). Each of the
client's updates is attacked as any update is (:func:`adversary.job.prepare_attack`, the same
presets and grants), which gives encodings, not images; stacked over T epochs they are decoded:

- ``keyless``: nothing granted beyond the traffic and the protocol (the encoder, its k, its largest
  coefficient, InstaHide's sign centre): :func:`adversary.decode.decode_without_keys`, with the
  number of private images the attacker is told (``private_images``, or ``epochs``: the updates
  cover that many passes over the client's data) or estimates from the spectrum;
- ``keys``: the mixing keys granted (``threat.mixing_keys``, the paper's upper bound):
  :func:`adversary.decode.decode_with_keys`.

InstaHide's signs are never granted: both decoders work on ``|x~ - c|`` and recover ``|x - c|``,
which is what they are scored against. Inter-InstaHide (partners from a public set) is out of scope.
Every decoder writes an attack folder of its own (the decoded images matched to the private ones,
their verdicts, the clusters found, the estimated number of private images, the inverted
encodings); the evaluator's scores come from :mod:`adversary.decode_evaluation`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor

from adversary.decode import decode_with_keys, decode_without_keys, estimate_private_images
from adversary.decode_evaluation import DecodeEvaluator, check_key_grant
from adversary.evaluation import Evaluator, GrantError, threat_model_for
from adversary.job import DEFAULT_PRESET, AttackOutcome, Execution, LocalExecution, Progress, prepare_attack
from adversary.observation import Observation, ObservationError, build_observation
from adversary.outputs import METRICS_JSON, attack_dir, save_grid, write_attack_outputs, write_json
from adversary.progress import PROGRESS_LOG, ProgressLog
from adversary.roles.base import DECODERS, AttackTarget, RoleError, check_decoders
from adversary.statement import AuditStatement
from adversary.traffic_log import TrafficLog
from fl_sim.deployment import DeploymentCard, load_card
from fl_sim.threat import ThreatModel

ENCODINGS = "encodings.safetensors"
ENCODINGS_PNG = "encodings.png"


@dataclass
class Inverted:
    """The gathered updates, inverted: per update, its encodings as the attack returned them and as
    the decoders see them (``|x~ - c|`` under InstaHide, in [0, 1])."""

    observations: list[Observation]
    rows: list[Tensor]
    objectives: list[float]
    method: str
    threat_model: ThreatModel
    seconds: float

    @cached_property
    def encodings(self) -> Tensor:
        """Every update's rows, stacked (the decoders' input)."""
        return torch.cat(self.rows)

    def origin(self) -> list[tuple[int, int]]:
        """(message id, row) of each stacked encoding."""
        return [(int(obs.message or -1), r) for obs, rows in zip(self.observations, self.rows) for r in range(len(rows))]

    def prefix(self, updates: int) -> Inverted:
        """The first ``updates`` updates only (fewer epochs)."""
        return Inverted(self.observations[:updates], self.rows[:updates], self.objectives[:updates], self.method,
                        self.threat_model, self.seconds)


@dataclass
class Decoded:
    decoder: str
    images: Tensor  # (F, C, H, W) in [0, 1]
    identifiable: np.ndarray  # (F,)
    clusters: list[np.ndarray] = field(default_factory=list)  # keyless: stacked encoding rows per image
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def candidates(self) -> Tensor:
        """What the decoder claims: its identifiable images."""
        return self.images[torch.as_tensor(self.identifiable, dtype=torch.bool)]


def check_encoder(card: DeploymentCard, decoders: tuple[str, ...]) -> None:
    """One line when this deployment has nothing a decode job can decode."""
    try:
        check_decoders("--decode", decoders)
    except RoleError as exc:
        raise ObservationError(str(exc)) from None
    if card.origin == "audit":
        raise ObservationError("--decode: an audited app announces no batch encoder; decoding is for fl-sim's own runs")
    if card.encoder is None:
        raise ObservationError("--decode: the deployment runs no batch encoder (MixUp, InstaHide): there is nothing to decode; "
                               "attack its updates one by one")
    if card.encoder_variant == "inter":
        raise ObservationError("--decode: Inter-InstaHide (partners from a public set) is out of the decoders' scope")


def gather_observations(log: TrafficLog, card: DeploymentCard, messages: tuple[int, ...]) -> list[Observation]:
    """The attacker's view of each gathered update; they must all be one client's."""
    if not messages:
        raise ObservationError("--rounds: no update to decode")
    observations = [build_observation(log, card, AttackTarget("update", None, (m,))) for m in messages]
    clients = sorted({o.client for o in observations if o.client is not None})
    if len(clients) != 1:
        raise ObservationError(f"--client: a decode gathers one client's updates; these come from nodes {clients}")
    return observations


def invert_updates(observations: list[Observation], evaluator: Evaluator, preset: str, overrides: dict[str, Any] | None,
                   threat: dict[str, Any] | None, *, decoders: tuple[str, ...], run_dir: Path,
                   progress: Progress | None = None, echo: TextIO | None = None, device: str = "auto",
                   execution: Execution | None = None) -> Inverted:
    """Attack every gathered update; refused before the first runs when a decoder's grant is missing.
    ``execution``: where the optimisations run (else in this process, on ``device``)."""
    execution = execution or LocalExecution(device)
    threat_model = threat_model_for(observations[0], threat)
    if "keys" in decoders:
        check_key_grant(evaluator, threat_model)
        if threat_model.labels != "known" and any((o.num_examples or 1) > 1 for o in observations):
            raise GrantError("threat.labels: decode keys ties each inverted image to its key row by its known label; "
                             "grant the labels (threat.labels=known) or decode keyless")
    started = time.perf_counter()
    rows, objectives, name = [], [], preset
    for i, obs in enumerate(observations, 1):
        prepared = prepare_attack(obs, evaluator, preset, preset, overrides, threat)
        name = prepared.method.name
        logged = ProgressLog(run_dir / PROGRESS_LOG, f"decode c{obs.client} update {i}/{len(observations)} msg {obs.message}",
                             prepared.method.total_iterations, echo=echo, inner=progress)
        recon, _ = execution(prepared, logged)
        rows.append(obs.unsigned(recon.images).clamp(0, 1))
        objectives.append(float(recon.info.get("objective", float("nan"))))
        threat_model = prepared.threat_model  # as the attack states it (a label strategy implies its grant)
    return Inverted(observations, rows, objectives, name, threat_model, time.perf_counter() - started)


def private_count(inverted: Inverted, k: int | None, private_images: int | None, epochs: int | None) -> tuple[int, str]:
    """How many private images the decode looks for, and where that came from."""
    if private_images is not None:
        return private_images, "told"
    if epochs is not None:
        return max(1, round(len(inverted.encodings) / epochs)), f"told: {epochs} epochs"
    return estimate_private_images(inverted.encodings, k), "estimated from the spectrum"


def decode(inverted: Inverted, decoder: str, card: DeploymentCard, scorer: DecodeEvaluator, *,
           private_images: int | None = None, epochs: int | None = None) -> Decoded:
    """One decoder over the stacked encodings (the sweep hands the exact ones in an :class:`Inverted` too)."""
    z = inverted.encodings
    started = time.perf_counter()
    if decoder == "keys":
        keys = scorer.keys(inverted.threat_model)
        result = decode_with_keys(z, keys.partners, keys.coeffs, num_private=keys.num_private)
        return Decoded("keys", result.images, result.identifiable,
                       info={"seconds": time.perf_counter() - started, "residual_rms": result.diagnostics["residual_rms"]})
    count, source = private_count(inverted, card.encoder_k, private_images, epochs)
    found = decode_without_keys(z, count, card.encoder_k)
    diag = found.diagnostics
    return Decoded("keyless", found.images, found.identifiable, found.clusters, info={
        "seconds": time.perf_counter() - started, "private_images_used": count, "private_images_source": source,
        "private_images_estimate": estimate_private_images(z, card.encoder_k), "found": int(diag.get("num_found", 0)),
        "fit_rms": (diag.get("fit_rms_history") or [None])[-1], "linear_programs": diag.get("num_lps"),
    })


def score_decoded(scorer: DecodeEvaluator, inverted: Inverted, decoded: Decoded, unsign: Callable[[Tensor], Tensor],
                  client: int | None, order: np.ndarray | None = None) -> dict[str, Any]:
    """The evaluator's scores of one decode: matched metrics, verdicts and (keyless) the clusters against the
    true memberships. The floor every decoder of the same encodings must beat is ``scorer.encodings_score``."""
    metrics = scorer.score(decoded.candidates, unsign, client)
    if decoded.decoder == "keyless":
        order = scorer.row_order(inverted.rows, unsign) if order is None else order
        metrics["clusters_scored"] = scorer.clusters(decoded.clusters, order)
    metrics["identifiable"] = int(decoded.identifiable.sum())
    metrics["private_images_true"] = scorer.encoding_set().num_private
    return metrics


def run_decode_job(
    run_dir: str | Path,
    target: AttackTarget,
    preset: str | None,
    *,
    attack_overrides: dict[str, Any] | None = None,
    threat: dict[str, Any] | None = None,
    progress: Progress | None = None,
    audit: AuditStatement | None = None,
    warn: Callable[[str], None] | None = None,
    echo: TextIO | None = None,
    device: str = "auto",
    execution: Execution | None = None,
) -> AttackOutcome:
    """Invert ``target``'s updates once, decode them with each of its decoders and write one attack folder
    per decoder; the outcome is the first decoder's, the others' summaries under ``decoders``."""
    run_dir = Path(run_dir)
    card = load_card(run_dir)
    if audit is not None:
        card = audit.card(card)
    check_encoder(card, target.decode)
    preset = preset or DEFAULT_PRESET
    with TrafficLog.open(run_dir) as log:
        observations = gather_observations(log, card, target.messages)
    evaluator = Evaluator.open(run_dir)
    inverted = invert_updates(observations, evaluator, preset, attack_overrides, threat, decoders=target.decode,
                              run_dir=run_dir, progress=progress, echo=echo, device=device,
                              execution=execution)
    scorer = DecodeEvaluator(evaluator, observations)
    unsign = observations[0].unsigned
    order = scorer.row_order(inverted.rows, unsign) if scorer.has_truth else None
    origin = inverted.origin()
    # What does not depend on the decoder, scored and drawn once.
    shared: dict[str, Any] = {}
    originals = exact = None
    if order is not None:
        shared = {"encodings_as_candidates": scorer.encodings_score(inverted.encodings, unsign),
                  "inversion": scorer.inversion_score(inverted.encodings, order, unsign)}
        originals = scorer.originals(unsign)
        exact = scorer.exact_encodings(unsign)[torch.as_tensor(order)]
    outcomes: list[tuple[Path, dict[str, Any]]] = []
    for decoder in target.decode:
        decoded = decode(inverted, decoder, card, scorer, private_images=target.private_images, epochs=target.epochs)
        summary = {
            "kind": "decode", "decoder": decoder, "client_node": observations[0].client,
            "messages": [o.message for o in observations], "round": observations[-1].round,
            "rounds": [observations[0].round, observations[-1].round], "updates": len(observations),
            "encodings": len(inverted.encodings), "epochs": target.epochs, "encoder": card.encoder, "k": card.encoder_k,
            "method": inverted.method, "preset": preset, "inversion_seconds": inverted.seconds,
            "objectives": inverted.objectives, "threat_model": _stated(inverted.threat_model, decoder), **decoded.info,
            "clusters": [[list(origin[int(r)]) for r in c] for c in decoded.clusters],
        }
        if order is not None:
            summary.update(score_decoded(scorer, inverted, decoded, unsign, observations[0].client, order), **shared)
        out_dir = attack_dir(run_dir, observations[-1].round, f"c{observations[0].client}x{len(observations)}", f"decode-{decoder}")
        write_attack_outputs(
            out_dir, images=decoded.images, shown=decoded.candidates.clamp(0, 1), labels=None, loss_curve=[],
            title=f"{decoder} decode of node {observations[0].client}", metrics=summary,
            config={"method": f"decode-{decoder}", "inversion": inverted.method, "preset": preset,
                    "overrides": attack_overrides or {}, "threat_model": _stated(inverted.threat_model, decoder),
                    "target": target.to_json()},
            originals=originals,
        )
        save_file({"inverted": inverted.encodings.contiguous()}, str(out_dir / ENCODINGS))
        save_grid(out_dir / ENCODINGS_PNG, inverted.encodings[:64], None if exact is None else exact[:64])
        outcomes.append((out_dir, summary))
    first_dir, first = outcomes[0]
    first["decoders"] = {s["decoder"]: {"folder": d.name, **{k: s.get(k) for k in SUMMARY_KEYS}} for d, s in outcomes}
    write_json(first_dir / METRICS_JSON, first)
    return AttackOutcome(first_dir, first)


def _stated(threat_model: ThreatModel, decoder: str) -> dict[str, Any]:
    """The grants one decoder used: the keys only where it decoded with them."""
    return {**threat_model.model_dump(), "mixing_keys": decoder == "keys" and threat_model.mixing_keys}


SUMMARY_KEYS = ("lpips_avg", "lpips_best", "lpips_std", "psnr_avg", "exact_recovered", "identifiable", "num_images",
                "verdict", "verdict_counts", "private_images_used", "private_images_true")


__all__ = ["DECODERS", "Decoded", "Inverted", "decode", "invert_updates", "run_decode_job", "score_decoded"]
