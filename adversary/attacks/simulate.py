"""The attacker's differentiable replica of the client's local computation.

FedSGD: one gradient of the mean cross-entropy. FedAvg: ``local_steps`` SGD steps with
``torch.func.functional_call`` on parameters held as plain tensors and ``create_graph=True``,
so the simulated delta (new - old) is differentiable in the dummy images (and soft labels).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from adversary.attacks.threat_model import AttackInputs, Component
from fl_sim.threat import Capability, ThreatModel


def soft_or_hard_ce(logits: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy; ``y`` is class indices [N] or class probabilities [N, K]."""
    return F.cross_entropy(logits, y)


class ClientSimulator(Component):
    """simulate(x, y) -> dict of the update tensors the observed update is compared with."""

    kind = "client simulation"

    def __init__(self, inputs: AttackInputs, threat_model: ThreatModel) -> None:
        self.model = inputs.model
        self.update_kind = inputs.update_kind
        self.local_steps = threat_model.local_steps if inputs.update_kind != "gradient" else 1
        self.lr = threat_model.local_lr if threat_model.local_lr is not None else 1.0
        self.batch_size = threat_model.local_batch_size
        self.name = "fedsgd" if inputs.update_kind == "gradient" else f"fedavg-{self.local_steps}-steps"
        observed = inputs.update
        self.names = [n for n, p in inputs.model.named_parameters() if n in observed and p.requires_grad]
        if not self.names:
            raise ValueError("the observed update names none of the model's trainable parameters")
        self.params = {n: p.detach() for n, p in inputs.model.named_parameters()}
        self.buffers = {n: b.detach().clone() for n, b in inputs.model.named_buffers()}

    def requirements(self) -> set[Capability]:
        return {Capability.LOCAL_HYPERPARAMS} if self.local_steps > 1 else set()

    def logits(self, x: Tensor, params: Mapping[str, Tensor] | None = None) -> Tensor:
        return functional_call(self.model, ({**self.params, **(params or {})}, self.buffers), (x,))

    def gradient(self, x: Tensor, y: Tensor, params: Mapping[str, Tensor], create_graph: bool = True) -> dict[str, Tensor]:
        loss = soft_or_hard_ce(self.logits(x, params), y)
        grads = torch.autograd.grad(loss, [params[n] for n in self.names], create_graph=create_graph)
        return dict(zip(self.names, grads))

    def batches(self, n: int) -> list[Tensor]:
        b = self.batch_size or n
        return [torch.tensor([(s * b + j) % n for j in range(b)]) for s in range(self.local_steps)]

    def __call__(self, x: Tensor, y: Tensor, create_graph: bool = True) -> dict[str, Tensor]:
        start = {n: self.params[n].clone().requires_grad_(True) for n in self.names}
        if self.update_kind == "gradient":
            return self.gradient(x, y, start, create_graph)
        params = dict(start)
        for idx in self.batches(x.shape[0]):
            grads = self.gradient(x[idx], y[idx], params, create_graph=True)
            params = {n: params[n] - self.lr * grads[n] for n in self.names}
        return {n: params[n] - start[n] for n in self.names}


def set_bn_mode(model: nn.Module, mode: str) -> bool:
    """Put the model in train/eval mode, returning the previous ``training`` flag."""
    was = model.training
    model.train(mode == "train")
    return was
