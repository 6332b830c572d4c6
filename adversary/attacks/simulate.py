"""The attacker's differentiable replica of the client's local computation.

FedSGD: one gradient of the mean cross-entropy. FedAvg: the client's local steps with its
optimiser, as PyTorch defines it (:class:`fl_sim.deployment.ClientRecipe`): SGD with momentum,
dampening, Nesterov and weight decay, or Adam / AdamW with betas, eps and weight decay, over
``local_steps`` or ``epochs`` of the client's data in batches (``drop_last``, ``max_steps``).
Parameters are plain tensors run through ``torch.func.functional_call`` with
``create_graph=True``, so the simulated delta (new - old) is differentiable in the dummy images
(and soft labels). The same code replays a recipe on the true batches (the recipe check).

Batches walk the N images in order, as a DataLoader without shuffling does: with ``epochs``,
each pass cuts them into consecutive batches; with a fixed number of steps, batch ``s`` is the
``s``-th consecutive slice (wrapping around), so each image is used once when N = steps x batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from adversary.attacks.threat_model import AttackInputs, Component
from fl_sim.deployment import ClientRecipe
from fl_sim.threat import Capability, ThreatModel

Params = dict[str, Tensor]


def soft_or_hard_ce(logits: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy; ``y`` is class indices [N] or class probabilities [N, K]."""
    return F.cross_entropy(logits, y)


def recipe_batches(recipe: ClientRecipe, num_images: int, steps: int, batch_size: int | None) -> list[Tensor]:
    """Index batches of one update over ``num_images`` images (see the module docstring)."""
    if recipe.epochs is not None and recipe.batch_size is not None:
        b, out = recipe.batch_size, []
        for _ in range(recipe.epochs):
            for start in range(0, num_images, b):
                if recipe.drop_last and start + b > num_images:
                    break
                out.append(torch.arange(start, min(start + b, num_images)))
                if recipe.max_steps is not None and len(out) >= recipe.max_steps:
                    return out
        return out
    b = batch_size or num_images
    return [torch.tensor([(s * b + j) % num_images for j in range(b)]) for s in range(steps)]


class LocalOptimizer:
    """One client's optimiser state, stepped functionally (differentiable when the inputs are)."""

    def __init__(self, recipe: ClientRecipe, lr: float, adam_smoothing: float = 0.0) -> None:
        self.recipe, self.lr, self.t, self.adam_smoothing = recipe, lr, 0, adam_smoothing
        self.state: dict[str, dict[str, Tensor]] = {}

    def step(self, params: Params, grads: Params) -> Params:
        self.t += 1
        rule = {"sgd": self._sgd, "adam": self._adam, "adamw": self._adam}[self.recipe.optimizer]
        return {n: rule(n, p, grads[n]) for n, p in params.items()}

    def _sgd(self, name: str, p: Tensor, g: Tensor) -> Tensor:
        r = self.recipe
        if r.weight_decay:
            g = g + r.weight_decay * p
        if r.momentum:
            state = self.state.setdefault(name, {})
            buf = g if "buf" not in state else r.momentum * state["buf"] + (1 - r.dampening) * g
            state["buf"] = buf
            g = g + r.momentum * buf if r.nesterov else buf
        return p - self.lr * g

    def _adam(self, name: str, p: Tensor, g: Tensor) -> Tensor:
        r = self.recipe
        b1, b2 = r.betas
        if r.optimizer == "adamw":
            p = p * (1 - self.lr * r.weight_decay)
        elif r.weight_decay:
            g = g + r.weight_decay * p
        state = self.state.setdefault(name, {"m": torch.zeros_like(g), "v": torch.zeros_like(g)})
        state["m"] = b1 * state["m"] + (1 - b1) * g
        state["v"] = b2 * state["v"] + (1 - b2) * g * g
        m_hat = state["m"] / (1 - b1**self.t)
        v_hat = state["v"] / (1 - b2**self.t)
        # sqrt has an infinite derivative at 0: where v_hat is 0 the gradient is 0 too (and stays so)
        root = torch.sqrt(torch.where(v_hat > 0, v_hat, torch.ones_like(v_hat))) * (v_hat > 0)
        eps = r.eps
        if self.adam_smoothing:
            # the attacker's surrogate (see ADAM_SMOOTHING): a floor under eps on the scale of this tensor's steps
            active = root.detach()[root.detach() > 0]
            if active.numel():
                eps = max(eps, self.adam_smoothing * float(active.median()))
        return p - self.lr * m_hat / (root + eps)


class ClientSimulator(Component):
    """simulate(x, y) -> dict of the update tensors the observed update is compared with."""

    kind = "client simulation"

    def __init__(self, inputs: AttackInputs, threat_model: ThreatModel, adam_smoothing: float = 0.0) -> None:
        self.model = inputs.model
        self.adam_smoothing = adam_smoothing
        self.update_kind = inputs.update_kind
        self.recipe = inputs.recipe or ClientRecipe()
        self.local_steps = threat_model.local_steps if inputs.update_kind != "gradient" else 1
        self.lr = threat_model.local_lr if threat_model.local_lr is not None else (self.recipe.lr or 1.0)
        self.batch_size = threat_model.local_batch_size
        self.name = "fedsgd" if inputs.update_kind == "gradient" else f"fedavg-{self.recipe.optimizer}"
        observed = inputs.update
        self.names = [n for n, p in inputs.model.named_parameters() if n in observed and p.requires_grad]
        if not self.names:
            raise ValueError("the observed update names none of the model's trainable parameters")
        self.params = {n: p.detach() for n, p in inputs.model.named_parameters()}
        # The leaves a FedSGD gradient is taken with respect to: the received weights themselves
        # (detached, never written), not a fresh copy of every parameter each iteration.
        self._leaves = {n: self.params[n].detach().requires_grad_(True) for n in self.names}
        self.buffers = {n: b.detach().clone() for n, b in inputs.model.named_buffers()}

    def requirements(self) -> set[Capability]:
        multi = self.update_kind != "gradient" and (self.local_steps > 1 or self.recipe.epochs is not None)
        return {Capability.LOCAL_HYPERPARAMS} if multi else set()

    def logits(self, x: Tensor, params: Mapping[str, Tensor] | None = None) -> Tensor:
        return functional_call(self.model, ({**self.params, **(params or {})}, self.buffers), (x,))

    def gradient(self, x: Tensor, y: Tensor, params: Mapping[str, Tensor], create_graph: bool = True) -> dict[str, Tensor]:
        loss = soft_or_hard_ce(self.logits(x, params), y)
        grads = torch.autograd.grad(loss, [params[n] for n in self.names], create_graph=create_graph)
        return dict(zip(self.names, grads))

    def batches(self, n: int) -> list[Tensor]:
        return recipe_batches(self.recipe, n, self.local_steps, self.batch_size)

    def train(self, steps: Sequence[tuple[Tensor, Tensor]], create_graph: bool = True) -> dict[str, Tensor]:
        """The update after local training on ``steps`` (each an (x, y) batch): new - old weights."""
        start = {n: self.params[n].clone().requires_grad_(True) for n in self.names}
        params, optimizer = dict(start), LocalOptimizer(self.recipe, self.lr, self.adam_smoothing)
        for x, y in steps:
            params = optimizer.step(params, self.gradient(x, y, params, create_graph=create_graph))
        return {n: params[n] - start[n] if create_graph else (params[n] - start[n]).detach() for n in self.names}

    def __call__(self, x: Tensor, y: Tensor, create_graph: bool = True) -> dict[str, Tensor]:
        if self.update_kind == "gradient":
            return self.gradient(x, y, self._leaves, create_graph)
        return self.train([(x[idx], y[idx]) for idx in self.batches(x.shape[0])], create_graph)


def set_bn_mode(model: nn.Module, mode: str) -> bool:
    """Put the model in train/eval mode, returning the previous ``training`` flag."""
    was = model.training
    model.train(mode == "train")
    return was


def replay_error(inputs: AttackInputs, threat_model: ThreatModel, clients: Sequence[Sequence[tuple[Tensor, Tensor]]]) -> float:
    """The recipe check: the relative L2 distance between the observed update and the one the attacker's
    model of the client (recipe and threat model) computes from each contributing client's true
    batches (their examples-weighted mean for an aggregate)."""
    sim = ClientSimulator(inputs, threat_model)
    was = set_bn_mode(inputs.model, "train")  # clients train in train mode
    try:
        total, mean = 0, {n: torch.zeros_like(sim.params[n], dtype=torch.float64) for n in sim.names}
        for steps in clients:
            if not steps:
                continue
            if sim.update_kind == "gradient":
                x, y = steps[0]
                start = {n: sim.params[n].clone().requires_grad_(True) for n in sim.names}
                update = {k: v.detach() for k, v in sim.gradient(x, y, start, create_graph=False).items()}
            else:
                update = sim.train(steps, create_graph=False)
            weight = sum(len(y) for _, y in steps)
            total += weight
            for n in sim.names:
                mean[n] += weight * update[n].double()
    finally:
        inputs.model.train(was)
    observed = inputs.update if inputs.update_kind == "gradient" else inputs.observed_delta()
    num = den = 0.0
    for n in sim.names:
        if n in observed:
            o = observed[n].double()
            num += float((mean[n] / max(total, 1) - o).pow(2).sum())
            den += float(o.pow(2).sum())
    return (num / den) ** 0.5 if den > 0 else float("inf")
