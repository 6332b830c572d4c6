"""The aggregate update between two global models, as an attackable observation.

A malicious client (or a curious server under secure aggregation) sees the
global model before and after a round. With n participants of equal weight:

- FedSGD: ``w' = w - lr * mean(g)``, so ``mean(g) = (w - w') / lr``;
- FedAvg: ``w' = mean(w_i)`` (weights) or ``w + mean(delta_i)``.

A malicious client also knows its own reply and removes it:
``others = (n * mean - own) / (n - 1)``. The result is the update of one
"virtual client" holding the union of the others' batches; for FedSGD (and
single-step FedAvg) attacking it is exact, for several local steps an
approximation (the average of local trainings is not the training on the union).
"""

from __future__ import annotations

from pathlib import Path

import torch

from adversary.observation import Observation, record_tensors
from adversary.roles.base import AttackTarget
from adversary.traffic_log import TrafficLog, TrafficLogError
from fl_sim.rundir import load_run_config
from fl_sim.task import load_task


def model_tensors(tensors: dict[str, torch.Tensor], shared_keys: list[str]) -> dict[str, torch.Tensor]:
    """The global model in a message: ``arrays/<name>``, or SecAgg+'s legacy positional
    ``fitins.parameters/<i>`` (in the order of the shared keys)."""
    named = record_tensors(tensors, "arrays")
    if named:
        return named
    positional = record_tensors(tensors, "fitins.parameters")
    if len(positional) != len(shared_keys):
        raise TrafficLogError(f"expected {len(shared_keys)} model tensors, found {len(positional)}")
    return {key: positional[str(i)] for i, key in enumerate(shared_keys)}


def observe_aggregate(run_dir: str | Path, target: AttackTarget) -> Observation:
    if target.kind != "aggregate" or len(target.messages) not in (2, 3):
        raise ValueError("observe_aggregate needs an aggregate target: (before, after[, own reply])")
    config = load_run_config(run_dir)
    fed = config.federation
    task = load_task(config)
    model = task.new_model()
    keys = task.shared_keys(model)
    with TrafficLog.open(run_dir) as log:
        before, after = log.message(target.messages[0]), log.message(target.messages[1])
        w0 = model_tensors(log.tensors(before.id), keys)
        w1 = model_tensors(log.tensors(after.id), keys)
        own = model_tensors(log.tensors(target.messages[2]), keys) if len(target.messages) == 3 else None
        participants = sorted({m.dst_node for m in log.messages(round=target.round, direction="down", message_type="train")})
    if not participants:
        raise TrafficLogError(f"round {target.round}: no training instructions captured")
    n = len(participants)
    others = [p for p in participants if p != target.client] if own is not None else participants
    if own is not None and n < 2:
        raise ValueError("a malicious client alone in its round has no one to attack")
    if fed.protocol == "fedsgd":
        mean = {k: (w0[k] - w1[k]) / fed.lr for k in w1 if k in w0}
        kind = "gradient"
    elif fed.upload == "delta":
        mean = {k: w1[k] - w0[k] for k in w1 if k in w0}
        kind = "delta"
    else:
        mean = dict(w1)
        kind = "weights"
    if own is not None:
        mean = {k: (n * v - own[k]) / (n - 1) for k, v in mean.items() if k in own}
    model.load_state_dict(w0, strict=False)
    per_client = fed.batch_size * (1 if fed.protocol == "fedsgd" else fed.local_steps)
    config_items = {k.rsplit("/", 1)[-1]: v for k, v in before.config.items()}
    return Observation(
        reply=after,
        instruction=before,
        model=model,
        update={k: v.to(torch.float32) for k, v in mean.items()},
        update_kind=kind,
        num_examples=per_client * len(others),
        # Each local step of the virtual client processes every client's step batch at once.
        local={"lr": config_items.get("lr", fed.lr), "local_steps": int(config_items.get("local-steps", 1)),
               "batch_size": int(config_items.get("batch-size", fed.batch_size)) * len(others)},
        image_shape=task.dataset.input_shape,
        num_classes=task.dataset.num_classes,
        aggregate_of=tuple(others),
        target_round=target.round,
    )
