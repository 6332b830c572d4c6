"""BatchNorm strategies: which statistics normalise the dummy batch and feed ``bn_prior``.

``exact``: the private batch's statistics are granted (the paper's strongest attacker).
``proxy``: only running statistics are known and used to normalise (BN in eval mode).
``infer``: nothing is granted; the dummy batch normalises itself and the prior target is
recovered from the observed update when it carries running statistics (FedAvg), else the
received model's running statistics (the paper's re-design B).
``none``: no BatchNorm knowledge and no prior.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from adversary.attacks.registry import component_registry
from adversary.attacks.threat_model import AttackInputs, Component
from fl_sim.models.bn_stats import batch_statistics
from fl_sim.threat import Capability, ThreatModel

BN_STRATEGIES = component_registry("bn strategy")

Stats = list[tuple[Tensor, Tensor]]


def batch_stats_from_running_update(
    old_mean: Tensor,
    old_var: Tensor,
    new_mean: Tensor,
    new_var: Tensor,
    momentum: float = 0.1,
    batch_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Invert one running-stat update: new = (1 - m) old + m batch  ->  batch = (new - (1 - m) old) / m.

    PyTorch stores the *unbiased* batch variance in ``running_var``; ``batch_size`` is the
    number of values per channel that went into it (N for BatchNorm1d, N*H*W for 2d) and is
    used to return the biased variance the forward pass normalised with (var * (n-1)/n).
    With ``batch_size=None`` the unbiased variance is returned.
    """
    mean = (new_mean - (1 - momentum) * old_mean) / momentum
    var = (new_var - (1 - momentum) * old_var) / momentum
    if batch_size is not None:
        if batch_size < 2:
            raise ValueError("batch_size must be >= 2 to undo the unbiased variance")
        var = var * (batch_size - 1) / batch_size
    return mean, var


def bn_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, _BatchNorm)]


def record_bn_stats(model: nn.Module, x: Tensor) -> Stats:
    """Per-layer (mean, biased var) of a batch in train mode, on a copy so running stats stay put.

    This is what ``BN_exact`` grants; evaluators build ``AttackInputs.bn_exact`` with it.
    """
    model = copy.deepcopy(model).train()
    with torch.no_grad(), batch_statistics(model) as stats:
        model(x)
    return [(m, v) for _, m, v in stats]


class BNStrategy(Component):
    mode = "train"  # BN mode of the simulated client forward

    def target(self, inputs: AttackInputs, threat_model: ThreatModel) -> Stats | None:
        return None


@BN_STRATEGIES.register("none")
class NoBN(BNStrategy):
    """Dummy batch normalises itself; no prior (also right for models without BN)."""


@BN_STRATEGIES.register("exact")
class ExactBN(BNStrategy):
    """Prior target = the private batch's statistics (granted)."""

    requires = frozenset({Capability.BN_EXACT})

    def target(self, inputs: AttackInputs, threat_model: ThreatModel) -> Stats | None:
        return inputs.bn_exact


@BN_STRATEGIES.register("proxy")
class ProxyBN(BNStrategy):
    """Normalise with the running statistics (BN in eval mode), as the paper's BN_proxy."""

    requires = frozenset({Capability.BN_PROXY})
    mode = "eval"

    def target(self, inputs: AttackInputs, threat_model: ThreatModel) -> Stats | None:
        return inputs.bn_proxy


@BN_STRATEGIES.register("infer")
class InferBN(BNStrategy):
    """Batch statistics recovered from running stats in a FedAvg update, else the model's running stats."""

    def __init__(self, momentum: float | None = None) -> None:
        self.momentum = momentum

    def target(self, inputs: AttackInputs, threat_model: ThreatModel) -> Stats | None:
        recovered = infer_bn_from_update(inputs, threat_model, self.momentum)
        return recovered if recovered is not None else inputs.bn_proxy


def _bn_counts(model: nn.Module, image_shape: tuple[int, ...], num_images: int) -> list[int]:
    """Values per channel each BN layer sees for a batch of ``num_images`` (N * spatial size)."""
    sizes: list[int] = []
    probe = copy.deepcopy(model).eval()
    hooks = [
        m.register_forward_hook(lambda _m, i, _o: sizes.append(i[0][0, 0].numel()))
        for m in probe.modules()
        if isinstance(m, _BatchNorm)
    ]
    with torch.no_grad():
        probe(torch.zeros(1, *image_shape))
    for h in hooks:
        h.remove()
    return [s * num_images for s in sizes]


def infer_bn_from_update(inputs: AttackInputs, threat_model: ThreatModel, momentum: float | None = None) -> Stats | None:
    """Exact batch statistics from one local step's running-statistics update, else None.

    A one-step FedAvg update carries them as part of the weight delta; a FedSGD
    reply without FedBN carries the client's new running statistics beside the
    gradient (``inputs.extra["running_stats"]``, absolute values).
    """
    if threat_model.local_steps != 1 or threat_model.num_images is None:
        return None
    names = bn_names(inputs.model)
    modules = dict(inputs.model.named_modules())
    if inputs.update_kind == "gradient":
        running = inputs.extra.get("running_stats") or {}
        delta = {k: v - modules[k.rsplit(".", 1)[0]].get_buffer(k.rsplit(".", 1)[1]) for k, v in running.items()
                 if k.rsplit(".", 1)[0] in modules}
    else:
        delta = inputs.observed_delta()
    keys = [(f"{n}.running_mean", f"{n}.running_var") for n in names]
    if not names or not all(a in delta and b in delta for a, b in keys):
        return None
    counts = _bn_counts(inputs.model, inputs.image_shape, threat_model.num_images)
    out: Stats = []
    for n, (km, kv), count in zip(names, keys, counts):
        mod = modules[n]
        m = momentum if momentum is not None else (mod.momentum if mod.momentum is not None else 0.1)
        old_m, old_v = mod.running_mean, mod.running_var
        out.append(batch_stats_from_running_update(old_m, old_v, old_m + delta[km], old_v + delta[kv], m, count))
    return out
