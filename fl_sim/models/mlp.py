"""Two-layer MLP whose first layer has a bias, for the analytic attack.

For a single image, row i of dL/dW1 equals dL/db1[i] * x, so dividing the two
recovers the input exactly; the bias on the first Linear is what enables it.
"""

from torch import nn

from .errors import ModelError
from .registry import InputShape, register_model


@register_model("mlp", default_norm="none", norms=("none",))
def build_mlp(
    input_shape: InputShape, num_classes: int, *, norm: str, hidden: int = 256
) -> nn.Module:
    if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 1:
        raise ModelError(f"model.options.hidden: expected a positive int, got {hidden!r}")
    c, h, w = input_shape
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(c * h * w, hidden, bias=True),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )
