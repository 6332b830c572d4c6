"""The malicious server's side after the round: recover images from what came back.

The server knows what it sent (the traffic log, or its own manipulation record) and
receives either one client's reply or, under secure aggregation, only the round's
unmasked mean update. Per strategy:

- ``trap-weights`` / ``imprint``: analytic, ``dW_i / db_i`` per unit or per bin
  (a one-step update ``-lr * g`` or a FedAvg delta works too: the ratio cancels the
  scale; over several local steps the weights drift, so it is approximate).
- ``fishing``: the fished classifier leaves (almost) only the target class's
  images in the gradient below it. The server counts them from the target's bias
  gradient (``db_t = -m / B``, the other images' probability of the target is ~0),
  then runs the optimization attack (the role's preset) for ``m`` images of that
  label on the gradient of the feature extractor (the classifier's rows of other
  classes carry every image and are left out). FedAvg deltas are treated as
  ``-lr x`` the summed gradients of the local steps, an approximation.

Scoring (evaluation only, with the ground-truth sidecar): candidates are matched
one-to-one to the private images (MSE, Hungarian), then PSNR, SSIM and LPIPS of the
matched pairs; an image counts as recovered exactly at PSNR >= 40 dB. Fishing is
scored against the target-class images it went after.
"""

from __future__ import annotations

import datetime as _dt
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from adversary.ground_truth import GroundTruth, PrivateBatch
from adversary.malicious.fishing import last_linear
from adversary.malicious.imprint import recover_from_imprint
from adversary.malicious.record import load_aggregate, manipulated_rounds
from adversary.malicious.server import IMPRINT_BLOCK
from adversary.malicious.trap_weights import recover_from_trap
from adversary.observation import find_instruction, record_tensors
from adversary.report import ATTACK_JSON, GRID_PNG, METRICS_JSON, save_grid, write_json
from adversary.traffic_log import TrafficLog
from fl_sim.models.server_defined import ARCHITECTURE_KEY, apply_architecture
from fl_sim.rundir import load_run_config
from fl_sim.task import Task, load_task

EXACT_PSNR = 40.0


@dataclass
class ServerObservation:
    """What the malicious server holds for one recovery."""

    round: int
    strategy: str
    model: nn.Module  # as sent (manipulated weights, any inserted block)
    gradient: dict[str, Tensor]  # gradient-like: the gradient, or -(delta)/lr summed over local steps
    protocol: str
    lr: float
    batch_size: int  # examples per local step the update averages (all clients' for an aggregate)
    image_shape: tuple[int, int, int]
    num_classes: int
    info: dict[str, Any]  # the strategy's choices that round (e.g. the fished class)
    reply_to: str | None = None  # single reply: the instruction it answers (ground truth key)
    nodes: tuple[int, ...] = ()  # aggregate: the clients it sums
    refused: bool = False  # the client reported zero examples (refused the round)
    source: dict[str, Any] = field(default_factory=dict)


def _sent_model(task: Task, sent: dict[str, Tensor], config: dict[str, Any]) -> nn.Module:
    model = task.new_model()
    spec = config.get(ARCHITECTURE_KEY)
    if spec:
        model = apply_architecture(model, str(spec), task.dataset.input_shape)
    model.load_state_dict(sent, strict=False)
    return model


def update_kind(fed: Any) -> str:
    """What a client's reply (and the server's mean of them) holds under this federation."""
    return "gradient" if fed.protocol == "fedsgd" else ("delta" if fed.upload == "delta" else "weights")


def _gradient_like(update: dict[str, Tensor], sent: dict[str, Tensor], kind: str, lr: float) -> dict[str, Tensor]:
    """The gradient (FedSGD) or ``-(w - w_sent) / lr`` / ``-delta / lr`` (FedAvg: the local steps' summed gradients)."""
    if kind == "gradient":
        return {k: v.double() for k, v in update.items()}
    if kind == "delta":
        return {k: -v.double() / lr for k, v in update.items()}
    return {k: -(v.double() - sent[k].double()) / lr for k, v in update.items() if k in sent}


def observe_reply(run_dir: Path, msg_id: int, strategy: str) -> ServerObservation:
    task = load_task(load_run_config(run_dir))
    fed = task.config.federation
    with TrafficLog.open(run_dir) as log:
        reply = log.message(msg_id)
        instruction = find_instruction(log, reply)
        sent = record_tensors(log.tensors(instruction.id), "arrays")
        received = log.tensors(reply.id)
    config = {k.rsplit("/", 1)[-1]: v for k, v in instruction.config.items()}
    metrics = {k.rsplit("/", 1)[-1]: v for k, v in reply.metrics.items()}
    kind = update_kind(fed)
    lr = float(config.get("lr", fed.lr))
    return ServerObservation(
        round=int(reply.round), strategy=strategy, model=_sent_model(task, sent, config),
        gradient=_gradient_like(record_tensors(received, "arrays"), sent, kind, lr), protocol=fed.protocol, lr=lr,
        batch_size=int(config.get("batch-size", fed.batch_size)), image_shape=task.dataset.input_shape,
        num_classes=task.dataset.num_classes, info=manipulated_rounds(run_dir).get(int(reply.round), {}).get("info", {}),
        reply_to=reply.reply_to, refused=int(metrics.get("num-examples", 1)) == 0,
        source={"kind": "reply", "message": msg_id, "client_node": reply.src_node},
    )


def observe_aggregate(run_dir: Path, path: str, strategy: str) -> ServerObservation:
    task = load_task(load_run_config(run_dir))
    fed = task.config.federation
    agg, mean = load_aggregate(path)
    entry = manipulated_rounds(run_dir)[agg.round]
    sent = load_file(str(run_dir / entry["tensors"]))  # what the server sent that round
    kind = update_kind(fed)
    return ServerObservation(
        round=agg.round, strategy=strategy, model=_sent_model(task, sent, entry.get("config", {})),
        gradient=_gradient_like(mean, sent, kind, fed.lr), protocol=fed.protocol, lr=fed.lr,
        batch_size=fed.batch_size * len(agg.nodes), image_shape=task.dataset.input_shape,
        num_classes=task.dataset.num_classes, info=entry.get("info", {}), nodes=agg.nodes,
        refused=agg.num_examples == 0, source={"kind": "aggregate", "path": path, "clients": len(agg.nodes)},
    )


# ----------------------------------------------------------------------------- recoveries


@dataclass
class Recovered:
    images: Tensor  # (K, C, H, W) candidates in [0, 1]
    info: dict[str, Any] = field(default_factory=dict)
    target_class: int | None = None  # fishing: only this class's images were attacked


Recovery = Callable[[ServerObservation, dict[str, Any]], Recovered]
RECOVERIES: dict[str, Recovery] = {}


def _recovery(name: str) -> Callable[[Recovery], Recovery]:
    def wrap(fn: Recovery) -> Recovery:
        RECOVERIES[name] = fn
        return fn

    return wrap


@_recovery("trap-weights")
def _trap(obs: ServerObservation, attack: dict[str, Any]) -> Recovered:
    rec = recover_from_trap(obs.gradient, obs.model, obs.image_shape)
    return Recovered(rec.images.clamp(0, 1), {"candidates": len(rec.images), "confirmed": int(rec.confirmed.sum())})


@_recovery("imprint")
def _imprint(obs: ServerObservation, attack: dict[str, Any]) -> Recovered:
    block = getattr(obs.model, IMPRINT_BLOCK)
    images = recover_from_imprint(obs.gradient, block, prefix=f"{IMPRINT_BLOCK}.")
    return Recovered(images, {"candidates": len(images), "bins": block.hidden})


def fished_count(obs: ServerObservation, target: int) -> int:
    """Target-class images behind the update, from the fished bias gradient: db_t = -m / B."""
    name, _ = last_linear(obs.model)
    db = float(obs.gradient[f"{name}.bias"][target])
    return max(0, int(round(-db * obs.batch_size)))


@_recovery("fishing")
def _fishing(obs: ServerObservation, attack: dict[str, Any]) -> Recovered:
    from adversary.attacks import AttackInputs, ThreatModel, build_attack
    from fl_sim.models import bn_layers

    target = int(obs.info["target_class"])
    m = fished_count(obs, target)
    info = {"target_class": target, "target_images": m}
    if m == 0:
        return Recovered(torch.empty(0, *obs.image_shape), {**info, "note": "no image of the fished class in the update"},
                         target)
    classifier, _ = last_linear(obs.model)
    features = {k: v.float() for k, v in obs.gradient.items() if not k.startswith(f"{classifier}.")}
    method = obs.info.get("recovery", "auto")
    if method in ("auto", "analytic") and (m == 1 or method == "analytic"):
        analytic = _analytic_single(obs, features)
        if analytic is not None:
            return Recovered(analytic, {**info, "method": "analytic"}, target)
    preset = attack.get("preset", "inverting-gradients")
    overrides = dict(attack.get("overrides") or {})
    if bn_layers(obs.model):  # the clients' BatchNorm state is theirs (FedBN): no BN prior
        overrides.setdefault("bn", {"name": "none"})
        overrides.setdefault("regularizers", {}).setdefault("bn_prior", None)
    inputs = AttackInputs(obs.model, features, update_kind="gradient", image_shape=obs.image_shape,
                          num_classes=obs.num_classes, labels=torch.full((m,), target, dtype=torch.long))
    result = build_attack(preset, overrides).run(inputs, ThreatModel(labels="known", bn_stats="none", num_images=m))
    return Recovered(result.images.detach().clamp(0, 1), {**info, "method": "optimize", "preset": preset,
                                                          "objective": result.objective}, target)


def _analytic_single(obs: ServerObservation, features: dict[str, Tensor]) -> Tensor | None:
    """The one fished image from a first fully connected layer (None where the model has none)."""
    from adversary.attacks import AttackInputs, recover_single_image
    from adversary.attacks.analytic import first_linear

    try:
        first_linear(obs.model)
    except ValueError:
        return None
    inputs = AttackInputs(obs.model, features, update_kind="gradient", image_shape=obs.image_shape,
                          num_classes=obs.num_classes)
    return recover_single_image(inputs).clamp(0, 1)


# ----------------------------------------------------------------------------- scoring


def _originals(run_dir: Path, obs: ServerObservation) -> tuple[Tensor, Tensor] | None:
    """(images, labels) the update came from: every local step's, all clients' for an aggregate."""
    try:
        truth = GroundTruth.open(run_dir)
    except FileNotFoundError:
        return None
    if obs.reply_to is not None:
        batches: list[PrivateBatch | None] = [truth.batch_for(obs.reply_to)]
    else:
        batches = [truth.batch_for_round(obs.round, node) for node in obs.nodes]
    if any(b is None for b in batches):
        return None
    steps = [s for b in batches for s in b.steps]  # type: ignore[union-attr]
    if not steps:
        return torch.empty(0, *obs.image_shape), torch.empty(0, dtype=torch.long)
    x = torch.cat([torch.from_numpy(s["images"]) for s in steps])
    y = torch.cat([torch.from_numpy(s["labels"]) for s in steps])
    idx = np.concatenate([s["indices"] for s in steps])
    _, first = np.unique(idx, return_index=True)  # an image seen in two local steps counts once
    keep = torch.as_tensor(np.sort(first))
    return x[keep], y[keep]


def score(candidates: Tensor, originals: Tensor) -> dict[str, Any]:
    """One-to-one MSE matching, then per-image PSNR/SSIM/LPIPS; exact = PSNR >= 40 dB."""
    from adversary.metrics import lpips_distance, match_reconstructions, psnr, ssim

    m = len(originals)
    if m == 0:
        return {"num_images": 0, "exact_recovered": 0}
    pool = candidates
    if len(pool) < m:  # fewer candidates than images: the rest count as not recovered
        pool = torch.cat([pool, torch.zeros(m - len(pool), *originals.shape[1:])])
    perm = match_reconstructions(pool, originals, cost="mse")
    matched = pool[torch.as_tensor(perm)]
    p = psnr(matched, originals).numpy()
    lp = lpips_distance(matched, originals).double().cpu().numpy()
    ss = ssim(matched, originals).numpy()
    with np.errstate(invalid="ignore"):
        return {"num_images": m, "exact_recovered": int((p >= EXACT_PSNR).sum()), "psnr": p.tolist(), "lpips": lp.tolist(),
                "psnr_avg": float(np.mean(np.minimum(p, 100.0))), "lpips_avg": float(lp.mean()),
                "lpips_best": float(lp.min()), "lpips_std": float(lp.std()), "ssim_avg": float(ss.mean()),
                "perm": perm.tolist()}


def run_recovery(run_dir: str | Path, obs: ServerObservation, attack: dict[str, Any] | None = None) -> tuple[Path, dict[str, Any]]:
    """Recover, score and write ``RUN_DIR/attacks/r<round>-<source>-<strategy>-.../``."""
    run_dir = Path(run_dir)
    if obs.strategy not in RECOVERIES:
        raise ValueError(f"adversary.options.strategy: no recovery for {obs.strategy!r}; have {', '.join(sorted(RECOVERIES))}")
    metrics: dict[str, Any] = {"round": obs.round, "strategy": obs.strategy, **obs.source, "protocol": obs.protocol}
    if obs.refused:
        rec = Recovered(torch.empty(0, *obs.image_shape), {"note": "the client refused the round (vetting): nothing sent"})
    else:
        rec = RECOVERIES[obs.strategy](obs, attack or {})
    metrics.update(rec.info)
    truth = _originals(run_dir, obs)
    originals = None
    if truth is not None:
        originals, labels = truth
        if rec.target_class is not None:
            originals = originals[labels == rec.target_class]
            metrics["batch_images"] = len(labels)
        metrics.update(score(rec.images, originals))
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    label = f"m{obs.source['message']}" if obs.source.get("kind") == "reply" else f"agg{len(obs.nodes)}"
    out_dir = run_dir / "attacks" / f"r{obs.round}-{label}-{obs.strategy}-{stamp}-{secrets.token_hex(2)}"
    out_dir.mkdir(parents=True)
    shown = rec.images
    if originals is not None and len(originals) and "perm" in metrics:
        pool = torch.cat([shown, torch.zeros(max(0, len(originals) - len(shown)), *obs.image_shape)])
        save_grid(out_dir / GRID_PNG, pool[torch.as_tensor(metrics["perm"])][:64], originals[:64])
    elif len(shown):
        save_grid(out_dir / GRID_PNG, shown[:64])
    save_file({"candidates": rec.images.contiguous()}, str(out_dir / "reconstruction.safetensors"))
    write_json(out_dir / METRICS_JSON, metrics)
    write_json(out_dir / ATTACK_JSON, {"kind": "malicious-server", "strategy": obs.strategy, "source": obs.source,
                                       "info": obs.info, "attack": attack or {}})
    return out_dir, metrics


def recover_target(run_dir: str | Path, target: Any, preset: str, overrides: dict[str, Any] | None) -> tuple[Path, dict[str, Any]]:
    """A ``malicious`` attack target (a reply, or a server aggregate under secure aggregation)."""
    run_dir = Path(run_dir)
    strategy = target.info.get("strategy", "trap-weights")
    if target.info.get("aggregate"):
        obs = observe_aggregate(run_dir, target.info["aggregate"], strategy)
    else:
        obs = observe_reply(run_dir, target.messages[0], strategy)
    return run_recovery(run_dir, obs, {"preset": preset, "overrides": overrides or {}})

