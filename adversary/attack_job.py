"""One attack on one intercepted update, from the traffic log to the outputs on disk.

The attacker's inputs come from the traffic log plus the threat model's explicit
grants; the ground-truth sidecar is read again only afterwards, to score.
"""

from __future__ import annotations

import datetime as _dt
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from adversary.attacks import ThreatModel, build_attack, label_accuracy, preset_config
from adversary.ground_truth import GroundTruth
from adversary.grants import GrantError, grant_inputs, private_batch, threat_model_for
from adversary.metrics import evaluate_reconstruction
from adversary.observation import Observation, observe
from adversary.roles.base import AttackTarget
from adversary.report import ATTACK_JSON, GRID_PNG, METRICS_JSON, save_grid, save_loss_curve, write_json

ATTACKS_DIR = "attacks"
SIMULATION_JSON = "simulation.json"  # audits: which simulated node holds which partition
Progress = Callable[[int, float], None]


@dataclass
class AttackOutcome:
    out_dir: Path
    metrics: dict[str, Any]


def _open_truth(run_dir: Path) -> GroundTruth | None:
    try:
        return GroundTruth.open(run_dir)
    except FileNotFoundError:
        return None


def score(obs: Observation, images: torch.Tensor, labels: torch.Tensor, truth: GroundTruth | None) -> dict[str, Any]:
    """Matched LPIPS/PSNR/SSIM and label accuracy against the private batch, if known."""
    if truth is None:
        return {}
    ev = private_batch(obs, truth)
    target = ev.trained_on
    if len(images) < len(target):
        return {"note": f"reconstructed {len(images)} images for a batch of {len(target)}"}
    # InstaHide: compare |x - c|, the signs are a random mask (identity otherwise).
    images, target = obs.unsigned(images).clamp(0, 1), obs.unsigned(target)
    metrics = evaluate_reconstruction(images.clamp(0, 1), target)
    hard = labels.argmax(-1) if labels.is_floating_point() else labels
    truth_labels = ev.trained_labels
    metrics["label_accuracy"] = label_accuracy(hard, truth_labels.argmax(-1) if truth_labels.is_floating_point() else truth_labels)
    metrics["num_images"] = len(target)
    metrics["scored_against"] = "encoded" if ev.encoded is not None else "private"
    return metrics


def _score_foreign(run_dir: Path, obs: Observation, images: torch.Tensor, foreign: dict[str, Any]) -> dict[str, Any]:
    """No ground truth: report the hyperparameter sources and, with the user's grant of the
    client's data, each reconstruction's LPIPS to its nearest image there."""
    from adversary.foreign import load_factory, nearest_lpips

    out: dict[str, Any] = {"hyperparameters": obs.local.get("sources", {})}
    ref = foreign.get("client_data")
    if ref:
        sim = json.loads((run_dir / SIMULATION_JSON).read_text())
        partition = sim["partition_of_node"][str(obs.client)]
        data = load_factory(ref, None)(partition, sim["num_partitions"])
        lp = nearest_lpips(images, data)
        out.update({"nearest_lpips": lp, "nearest_lpips_avg": sum(lp) / len(lp), "nearest_lpips_best": min(lp),
                    "client_partition": partition})
    return out


def run_attack_on_message(
    run_dir: str | Path,
    msg_id: int,
    preset: str,
    *,
    attack_overrides: dict[str, Any] | None = None,
    threat: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> AttackOutcome:
    return run_attack(run_dir, AttackTarget("update", None, (msg_id,)), preset, attack_overrides=attack_overrides,
                      threat=threat, progress=progress)


def observe_target(run_dir: Path, target: AttackTarget, foreign: dict[str, Any] | None = None) -> Observation:
    from adversary.foreign import audit_settings, observe_foreign

    audit = audit_settings(run_dir)
    if audit is not None:
        opts = {**(audit.get("model") or {}), **(foreign or {})}
        if not opts.get("factory") or not opts.get("input_shape"):
            raise GrantError("--model/--input-shape: an audited app's model must be named (module:factory) with its input shape C,H,W")
        if target.kind != "update":
            raise GrantError("aggregate attacks on audited apps are not supported")
        return observe_foreign(run_dir, target.messages[0], model_ref=opts["factory"], input_shape=tuple(opts["input_shape"]),
                               update_kind=opts.get("update_kind", "weights"))
    if target.kind == "aggregate":
        from adversary.aggregate import observe_aggregate

        return observe_aggregate(run_dir, target)
    return observe(run_dir, target.messages[0])


def run_attack(
    run_dir: str | Path,
    target: AttackTarget,
    preset: str,
    *,
    attack_overrides: dict[str, Any] | None = None,
    threat: dict[str, Any] | None = None,
    progress: Progress | None = None,
    foreign: dict[str, Any] | None = None,
) -> AttackOutcome:
    """Attack one target (a client update or an aggregate) and write its outputs.

    ``foreign`` (audited apps): ``factory``, ``input_shape``, ``update_kind`` and
    optionally ``client_data`` (``module:fn`` returning a partition's images).
    """
    run_dir = Path(run_dir)
    if target.kind in ("malicious", "trap"):  # a malicious server's recovery ("trap": earlier job books)
        from adversary.malicious.recovery import recover_target

        out_dir, metrics = recover_target(run_dir, target, preset, attack_overrides)
        return AttackOutcome(out_dir, metrics)
    obs = observe_target(run_dir, target, foreign)
    msg_id = obs.reply.id
    threat_model: ThreatModel = threat_model_for(obs, threat)
    if threat_model.num_images is None:
        raise GrantError("threat.num_images: the traffic does not reveal the batch size; grant it (--set threat.num_images=N)")
    truth = _open_truth(run_dir)
    inputs = grant_inputs(obs, threat_model, truth)
    resolved = preset_config(preset, attack_overrides)
    attack = build_attack(preset, attack_overrides)
    attack.check(inputs, threat_model)
    result = attack.run(inputs, threat_model, callback=progress)

    metrics = score(obs, result.images, result.labels, truth)
    if obs.foreign:
        metrics.update(_score_foreign(run_dir, obs, result.images, foreign or {}))
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    label = f"m{msg_id}" if target.kind == "update" else f"agg{len(obs.aggregate_of)}"
    out_dir = run_dir / ATTACKS_DIR / f"r{obs.round}-{label}-{preset}-{stamp}-{secrets.token_hex(2)}"
    out_dir.mkdir(parents=True)
    shown = obs.unsigned(result.images)
    if truth is not None and "perm" in metrics:
        originals = private_batch(obs, truth).trained_on
        originals = obs.unsigned(originals)
        save_grid(out_dir / GRID_PNG, shown[torch.as_tensor(metrics["perm"])], originals)
    else:
        save_grid(out_dir / GRID_PNG, shown)
    save_loss_curve(out_dir, result.loss_curve, f"{preset} on message {msg_id} (round {obs.round})")
    save_file({"images": result.images.contiguous(), "labels": result.labels.contiguous()}, str(out_dir / "reconstruction.safetensors"))
    summary = {
        "message": msg_id,
        "target": {"kind": target.kind, "messages": list(target.messages), "round": obs.round,
                   "aggregate_of": list(obs.aggregate_of)},
        "round": obs.round,
        "client_node": None if obs.aggregate_of else obs.client,
        "preset": preset,
        "objective": result.objective,
        "trial_losses": result.trial_losses,
        "timing": result.timing,
        **{k: v for k, v in metrics.items()},
    }
    write_json(out_dir / METRICS_JSON, summary)
    write_json(
        out_dir / ATTACK_JSON,
        {
            "preset": preset,
            "resolved": resolved,
            "overrides": attack_overrides or {},
            "threat_model": threat_model.__dict__,
            "update_kind": obs.update_kind,
            "message": msg_id,
        },
    )
    return AttackOutcome(out_dir, summary)
