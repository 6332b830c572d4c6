"""Six-layer ConvNet without normalization, for the paper's MNIST appendix.

The paper does not give exact widths, so we choose (w = ``width``, default 32):

    conv3x3(C, w)  - ReLU - conv3x3(w, w)   - ReLU - maxpool2
    conv3x3(w, 2w) - ReLU - conv3x3(2w, 2w) - ReLU - maxpool2
    flatten - Linear(2w * (H//4) * (W//4), 8w) - ReLU - Linear(8w, num_classes)

i.e. 4 conv + 2 fully connected layers. No BatchNorm: the appendix studies a
model whose gradients carry no batch statistics.
"""

from torch import nn

from .errors import ModelError
from .registry import InputShape, register_model


def _check_width(width: object) -> int:
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise ModelError(f"model.options.width: expected a positive int, got {width!r}")
    return width


@register_model("convnet", default_norm="none", norms=("none",))
def build_convnet(
    input_shape: InputShape, num_classes: int, *, norm: str, width: int = 32
) -> nn.Module:
    w = _check_width(width)
    c, h, wd = input_shape
    if h < 4 or wd < 4:
        raise ModelError(f"model.input_shape: convnet needs H, W >= 4, got {input_shape!r}")
    return nn.Sequential(
        nn.Conv2d(c, w, 3, padding=1), nn.ReLU(),
        nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(),
        nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * w * (h // 4) * (wd // 4), 8 * w), nn.ReLU(),
        nn.Linear(8 * w, num_classes),
    )  # fmt: skip
