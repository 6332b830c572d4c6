"""LeNet with sigmoid activations, as attacked in DLG (Zhu et al., 2019).

Sigmoids (smooth, twice differentiable) and DLG's uniform [-0.5, 0.5] weight
init are what make the original DLG attack succeed; ``init="dlg"`` reproduces
that init, ``init="default"`` keeps PyTorch's.
"""

import math

import torch
from torch import nn

from .errors import ModelError
from .registry import InputShape, register_model

INITS = ("default", "dlg")


def init_uniform(model: nn.Module, a: float = 0.5, seed: int | None = None) -> nn.Module:
    """Fill every weight and bias uniformly in [-a, a], as DLG's code does.

    A private generator is used when ``seed`` is given so the global RNG is
    left untouched.
    """
    gen = None
    if seed is not None:
        gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for name in ("weight", "bias"):
                param = getattr(module, name, None)
                if isinstance(param, nn.Parameter):
                    values = torch.empty(param.shape).uniform_(-a, a, generator=gen)
                    param.copy_(values)
    return model


@register_model("lenet", default_norm="none", norms=("none",))
def build_lenet(
    input_shape: InputShape,
    num_classes: int,
    *,
    norm: str,
    init: str = "default",
    seed: int | None = None,
) -> nn.Module:
    if init not in INITS:
        raise ModelError(
            f"model.options.init: unknown init {init!r}; accepted: {', '.join(INITS)}"
        )
    c, h, w = input_shape
    flat = 12 * math.ceil(h / 4) * math.ceil(w / 4)
    model = nn.Sequential(
        nn.Conv2d(c, 12, 5, stride=2, padding=2), nn.Sigmoid(),
        nn.Conv2d(12, 12, 5, stride=2, padding=2), nn.Sigmoid(),
        nn.Conv2d(12, 12, 5, stride=1, padding=2), nn.Sigmoid(),
        nn.Flatten(),
        nn.Linear(flat, num_classes),
    )  # fmt: skip
    if init == "dlg":
        init_uniform(model, 0.5, seed)
    return model
