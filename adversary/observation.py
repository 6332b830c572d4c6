"""From an intercepted client reply to what the attacker holds.

The attacker sees the traffic log only: the reply (the client's update), the
instruction it answers (the weights the client received and the local
hyperparameters the server sent), and the model architecture, which the server
chose. Nothing here reads the ground-truth sidecar; granting knowledge beyond the
traffic is :mod:`adversary.grants`' job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adversary.traffic_log import MessageInfo, TrafficLog, TrafficLogError
from fl_sim.rundir import load_run_config
from fl_sim.task import load_task


@dataclass
class Observation:
    reply: MessageInfo
    instruction: MessageInfo
    model: nn.Module
    update: dict[str, torch.Tensor]
    update_kind: str
    num_examples: int | None
    local: dict[str, Any]
    image_shape: tuple[int, int, int]
    num_classes: int
    encoder: str | None = None  # the deployment's batch encoder (public protocol knowledge)
    # InstaHide flips signs around this per-channel value (protocol + the model's Normalize: public).
    sign_center: tuple[float, ...] | None = None
    running_stats: dict[str, torch.Tensor] = field(default_factory=dict)
    # For aggregate targets: the nodes whose private batches the update averages
    # (used by the evaluator to score; the attack never reads the sidecar).
    aggregate_of: tuple[int, ...] = ()
    target_round: int | None = None
    foreign: bool = False  # an audited app: no ground truth, hyperparameters granted or assumed

    @property
    def input_range(self) -> tuple[float, float]:
        """InstaHide's sign flips around ``c`` put model inputs in [2c - 1, 2c] (a superset box)."""
        if self.sign_center is None:
            return (0.0, 1.0)
        return (min(0.0, 2 * min(self.sign_center) - 1), max(1.0, 2 * max(self.sign_center)))

    def unsigned(self, x: torch.Tensor) -> torch.Tensor:
        """``|x - c|``: what survives InstaHide's unknown signs (``x`` itself without InstaHide)."""
        if self.sign_center is None:
            return x
        return (x - self.center_tensor.to(x)).abs()

    @property
    def center_tensor(self) -> torch.Tensor:
        c = self.sign_center or (0.0,)
        return torch.tensor(c, dtype=torch.float32).view(1, -1, 1, 1)

    @property
    def round(self) -> int | None:
        return self.target_round if self.target_round is not None else self.reply.round

    @property
    def client(self) -> int:
        return self.reply.src_node

    def private_batches(self, truth: Any) -> list[Any]:
        """Evaluator side: the sidecar batches behind this update."""
        if self.aggregate_of:
            return [truth.batch_for_round(self.round, node) for node in self.aggregate_of]
        return [truth.batch_for(self.reply.reply_to or "")]


def record_tensors(tensors: dict[str, torch.Tensor], record: str) -> dict[str, torch.Tensor]:
    head = record + "/"
    return {k[len(head):]: v for k, v in tensors.items() if k.startswith(head)}


def encoding_of(task: Any, model: nn.Module) -> dict[str, Any]:
    """The deployment's batch encoder and, for InstaHide, the centre its signs flip around."""
    encoders = [d for d in task.config.defenses if d.name in ("mixup", "instahide")]
    if not encoders:
        return {"encoder": None, "sign_center": None}
    params = encoders[0]
    if params.name != "instahide":
        return {"encoder": params.name, "sign_center": None}
    from clients.defenses.instahide import sign_center

    center = sign_center(params.center, model, task.dataset.input_shape[0]).expand(1, task.dataset.input_shape[0], 1, 1)
    return {"encoder": "instahide", "sign_center": tuple(float(v) for v in center.flatten())}


def client_updates(log: TrafficLog, round: int | None = None, client: int | None = None) -> list[MessageInfo]:
    """Client-to-server training replies, optionally of one round and/or client."""
    return [m for m in log.messages(round=round, client=client, direction="up", message_type="train") if not m.error]


def find_instruction(log: TrafficLog, reply: MessageInfo) -> MessageInfo:
    for candidate in log.messages(round=reply.round, client=reply.src_node, direction="down"):
        if candidate.flower_id == reply.reply_to:
            return candidate
    raise TrafficLogError(f"MSG_ID: the instruction that message {reply.id} answers was not captured")


def observe(run_dir: str | Path, reply_id: int) -> Observation:
    """Build the attacker's view of one captured client reply."""
    with TrafficLog.open(run_dir) as log:
        reply = log.message(reply_id)
        if reply.direction != "up" or reply.message_type != "train":
            raise TrafficLogError(f"MSG_ID: message {reply_id} is a {reply.direction} {reply.message_type} message, not a client update")
        instruction = find_instruction(log, reply)
        sent = log.tensors(instruction.id)
        received = log.tensors(reply.id)
    task = load_task(load_run_config(run_dir))
    model = task.new_model()
    model.load_state_dict(record_tensors(sent, "arrays"), strict=False)
    config = {k.rsplit("/", 1)[-1]: v for k, v in instruction.config.items()}
    metrics = {k.rsplit("/", 1)[-1]: v for k, v in reply.metrics.items()}
    protocol = config.get("protocol", task.config.federation.protocol)
    if protocol == "fedsgd":
        kind = "gradient"
    else:
        kind = "delta" if task.config.federation.upload == "delta" else "weights"
    return Observation(
        reply=reply,
        instruction=instruction,
        model=model,
        update=record_tensors(received, "arrays"),
        update_kind=kind,
        num_examples=int(metrics["num-examples"]) if "num-examples" in metrics else None,
        local={"lr": config.get("lr"), "local_steps": int(config.get("local-steps", 1)), "batch_size": config.get("batch-size")},
        image_shape=task.dataset.input_shape,
        num_classes=task.dataset.num_classes,
        **encoding_of(task, model),
        running_stats=record_tensors(received, "buffers"),
    )
