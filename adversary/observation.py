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
    running_stats: dict[str, torch.Tensor] = field(default_factory=dict)
    # For aggregate targets: the nodes whose private batches the update averages
    # (used by the evaluator to score; the attack never reads the sidecar).
    aggregate_of: tuple[int, ...] = ()
    target_round: int | None = None
    foreign: bool = False  # an audited app: no ground truth, hyperparameters granted or assumed

    @property
    def input_range(self) -> tuple[float, float]:
        """InstaHide's sign flips put model inputs in [-1, 1]."""
        return (-1.0, 1.0) if self.encoder == "instahide" else (0.0, 1.0)

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


def _record(tensors: dict[str, torch.Tensor], record: str) -> dict[str, torch.Tensor]:
    head = record + "/"
    return {k[len(head):]: v for k, v in tensors.items() if k.startswith(head)}


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
    names = [d.name for d in task.config.defenses]
    model.load_state_dict(_record(sent, "arrays"), strict=False)
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
        update=_record(received, "arrays"),
        update_kind=kind,
        num_examples=int(metrics["num-examples"]) if "num-examples" in metrics else None,
        local={"lr": config.get("lr"), "local_steps": int(config.get("local-steps", 1)), "batch_size": config.get("batch-size")},
        image_shape=task.dataset.input_shape,
        num_classes=task.dataset.num_classes,
        encoder=next((n for n in names if n in ("mixup", "instahide")), None),
        running_stats=_record(received, "buffers"),
    )
