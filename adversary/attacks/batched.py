"""Many independent gradient-inversion attacks as one batched computation (``torch.func.vmap``).

``GradientInversion`` computes each trial's gradient on its own; a batch-1 ResNet-18 leaves a
GPU mostly idle. Here A independent attacks (different observed gradients, labels and starting
images; each on N images) are stepped together: per attack,

    g(x)      = torch.func.grad(CE(functional_call(model, params, x), y))(params)   # client's gradient
    loss(x)   = cosine(g(x), observed) [+ alpha_TV * TV(x)]                        # Inverting Gradients
    d loss/dx = torch.func.grad_and_value(loss)(x)                                  # double backward

and ``vmap`` maps that over the attack dimension, so every layer runs once on A*N images.
Attacks stay independent: nothing but the (shared, frozen) model crosses the attack dimension.
The images are updated with signed Adam, the step schedule and the box constraint of
``adversary.attacks.optimizers.Adam`` (element-wise, so one Adam over [A, N, C, H, W] is A
independent Adams).

BatchNorm. ``bn_mode="train"`` (default; what a FedSGD client ran, and the runner's ``none`` /
``exact`` BN strategies) normalises each attack's N images with their own batch statistics.
A module in train mode would also update its running statistics in place, which vmap refuses
(an unbatched buffer cannot hold per-attack values), so the attack works on a deep copy of the
model passed through ``torch.func.replace_all_batch_norm_modules_``: running statistics are
dropped and BN always uses batch statistics, computed per attack under vmap (statistics never
mix attacks). The running statistics do not enter the client's gradient, so nothing changes.
``bn_mode="eval"`` (the runner's ``proxy`` strategy) normalises with the model's running
statistics, which are only read. The caller's model is never modified.

Scope: FedSGD-style observations (one gradient of the mean cross-entropy; for one-step FedAvg
pass ``AttackInputs.observed_gradient_like()``), known hard or soft labels, objectives ``cosine``
(default) or ``l2``, optional TV, no BN prior and no restarts (run the same gradient as several
attacks with different seeds instead). Models must be deterministic (no dropout).
On CPU this is slower than a loop over attacks (notes/stack.md); it is meant for GPUs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, grad_and_value, replace_all_batch_norm_modules_, vmap
from torch.nn import functional as F

from adversary.attacks.optimizers import milestones

Observed = Sequence[Mapping[str, Tensor]] | Mapping[str, Tensor]
StepCallback = Callable[[int, Tensor, Tensor], None]
BN_MODES = ("train", "eval")
OBJECTIVE_NAMES = ("cosine", "l2")


def stack_observed(observed: Observed, model: nn.Module) -> dict[str, Tensor]:
    """Observed gradients as one dict of [A, *param_shape] tensors, in model parameter order.

    ``observed`` is a list of per-attack dicts (parameter name -> gradient) or an already
    stacked dict; only trainable parameters of ``model`` are kept (as ``ClientSimulator`` does).
    """
    params = dict(model.named_parameters())
    if isinstance(observed, Mapping):
        stacked = dict(observed)
        for k, v in stacked.items():
            if k in params and tuple(v.shape[1:]) != tuple(params[k].shape):
                raise ValueError(f"observed[{k!r}]: expected [A, {', '.join(map(str, params[k].shape))}], got {tuple(v.shape)}")
    else:
        if not observed:
            raise ValueError("observed: no attacks given")
        keys = [k for k in observed[0] if k in params]
        for i, obs in enumerate(observed):
            if [k for k in obs if k in params] != keys:
                raise ValueError(f"observed[{i}]: names differ from observed[0]'s")
        stacked = {k: torch.stack([obs[k].detach() for obs in observed]) for k in keys}
    names = [n for n, p in model.named_parameters() if n in stacked and p.requires_grad]
    if not names:
        raise ValueError("the observed gradients name none of the model's trainable parameters")
    sizes = {stacked[n].shape[0] for n in names}
    if len(sizes) != 1:
        raise ValueError(f"observed: tensors disagree on the number of attacks ({sorted(sizes)})")
    return {n: stacked[n] for n in names}


def total_variation(x: Tensor) -> Tensor:
    """Anisotropic TV of one attack's images, as the ``tv`` regularizer (mean absolute differences)."""
    return (x[..., :, 1:] - x[..., :, :-1]).abs().mean() + (x[..., 1:, :] - x[..., :-1, :]).abs().mean()


class BatchedObjective:
    """The per-attack matching loss and its image gradient, vmapped over attacks.

    ``__call__(images [A, N, C, H, W], observed {name: [A, ...]}, labels [A, N] or [A, N, K])``
    returns ``(total [A], objective [A], d total / d images [A, N, C, H, W])``.
    """

    def __init__(
        self,
        model: nn.Module,
        names: Sequence[str],
        *,
        objective: str = "cosine",
        tv: float = 0.0,
        bn_mode: str = "train",
        device: torch.device | str | None = None,
        chunk_size: int | None = None,
    ) -> None:
        if objective not in OBJECTIVE_NAMES:
            raise ValueError(f"objective: {objective!r} is not one of {', '.join(OBJECTIVE_NAMES)}")
        if bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode: {bn_mode!r} is not one of {', '.join(BN_MODES)}")
        device = torch.device(device) if device is not None else next(model.parameters()).device
        net = copy.deepcopy(model).to(device)
        if bn_mode == "train":
            replace_all_batch_norm_modules_(net)  # batch statistics, no running-stat updates
        net.train(bn_mode == "train")
        self.net, self.device, self.names = net, device, list(names)
        self.objective, self.tv, self.chunk_size = objective, float(tv), chunk_size
        params = {n: p.detach() for n, p in net.named_parameters()}
        self.trainable = {n: params[n] for n in self.names}
        self.frozen = {n: p for n, p in params.items() if n not in self.trainable}
        self.buffers = {n: b.detach() for n, b in net.named_buffers()}
        self._fn = vmap(grad_and_value(self._attack_loss, has_aux=True), chunk_size=chunk_size)

    def _client_loss(self, trainable: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        logits = functional_call(self.net, ({**self.frozen, **trainable}, self.buffers), (x,))
        return F.cross_entropy(logits, y)

    def _distance(self, sim: dict[str, Tensor], obs: dict[str, Tensor]) -> Tensor:
        if self.objective == "l2":
            return sum((sim[n] - obs[n]).pow(2).sum() for n in self.names)  # type: ignore[return-value]
        dot = sum((sim[n] * obs[n]).sum() for n in self.names)
        sim_sq = sum(sim[n].pow(2).sum() for n in self.names)
        obs_sq = sum(obs[n].pow(2).sum() for n in self.names)
        return 1 - dot / (torch.sqrt(sim_sq) * torch.sqrt(obs_sq) + 1e-12)  # as objectives.Cosine

    def _attack_loss(self, x: Tensor, obs: dict[str, Tensor], y: Tensor) -> tuple[Tensor, Tensor]:
        simulated = grad(self._client_loss)(self.trainable, x, y)  # inner grad: the client's update
        obj = self._distance(simulated, obs)
        total = obj + self.tv * total_variation(x) if self.tv else obj
        return total, obj.detach()

    def __call__(self, images: Tensor, observed: Mapping[str, Tensor], labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        obs = {n: observed[n] for n in self.names}
        g, (total, obj) = self._fn(images.detach(), obs, labels)
        return total.detach(), obj, g


def _prepare(model: nn.Module, observed: Observed, labels: Tensor, device) -> tuple[dict[str, Tensor], Tensor, torch.device]:
    device = torch.device(device) if device is not None else next(model.parameters()).device
    obs = {k: v.detach().to(device, torch.float32) for k, v in stack_observed(observed, model).items()}
    a = next(iter(obs.values())).shape[0]
    if labels.dim() not in (2, 3) or labels.shape[0] != a:
        raise ValueError(f"labels: expected [A={a}, N] class indices or [A, N, K] probabilities, got {tuple(labels.shape)}")
    return obs, labels.to(device), device


def batched_attack_loss(
    model: nn.Module,
    observed: Observed,
    labels: Tensor,
    images: Tensor,
    *,
    objective: str = "cosine",
    tv: float = 0.0,
    bn_mode: str = "train",
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-attack (total loss [A], matching objective [A], image gradient [A, N, C, H, W]) at ``images``."""
    obs, labels, device = _prepare(model, observed, labels, device)
    fn = BatchedObjective(model, list(obs), objective=objective, tv=tv, bn_mode=bn_mode, device=device)
    return fn(images.to(device), obs, labels)


def batched_inversion(
    model: nn.Module,
    observed: Observed,
    labels: Tensor,
    iterations: int = 1000,
    *,
    objective: str = "cosine",
    tv: float = 0.0,
    bn_mode: str = "train",
    lr: float = 0.1,
    signed: bool = True,
    decay: Sequence[float] = (3 / 8, 5 / 8, 7 / 8),
    gamma: float = 0.1,
    box: tuple[float, float] | None = (0.0, 1.0),
    init: str | Tensor = "randn",
    image_shape: tuple[int, int, int] = (3, 32, 32),
    seed: int = 0,
    device: torch.device | str | None = None,
    chunk_size: int | None = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """Run A independent attacks at once; returns the reconstructed images [A, N, C, H, W].

    ``observed``: A gradients (list of {name: tensor} or a dict of [A, ...] tensors);
    ``labels``: [A, N] class indices or [A, N, K] probabilities. ``init`` "randn"/"rand" draws
    attack a's start on the CPU from ``Generator().manual_seed(seed + a)`` (the start
    ``GradientInversion(seed=seed + a, restarts=1)`` uses), or pass a tensor [A, N, C, H, W].
    Optimizer options are those of ``adam-signed``; ``callback(it, total[A], objective[A])``
    gets the losses (on ``device``, before the step) after every iteration.
    ``chunk_size`` bounds how many attacks vmap processes at once (memory).
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    obs, labels, device = _prepare(model, observed, labels, device)
    a, n = labels.shape[:2]
    if isinstance(init, Tensor):
        if init.shape[:2] != (a, n):
            raise ValueError(f"init: expected [A={a}, N={n}, C, H, W], got {tuple(init.shape)}")
        x0 = init.detach().clone().float()
    elif init in ("randn", "rand"):
        draw = torch.randn if init == "randn" else torch.rand
        x0 = torch.stack([draw((n, *image_shape), generator=torch.Generator().manual_seed(seed + i)) for i in range(a)])
    else:
        raise ValueError(f"init: {init!r} is not 'randn', 'rand' or a tensor")
    fn = BatchedObjective(model, list(obs), objective=objective, tv=tv, bn_mode=bn_mode, device=device, chunk_size=chunk_size)
    x = x0.to(device).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones(iterations, decay), gamma=gamma)
    for it in range(iterations):
        total, obj, g = fn(x, obs, labels)
        x.grad = g.sign() if signed else g
        opt.step()
        sched.step()
        if box is not None:
            with torch.no_grad():
                x.clamp_(*box)
        if callback is not None:
            callback(it, total, obj)
    out = x.detach()
    return out.clamp(*box) if box is not None else out
