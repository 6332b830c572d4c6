"""CIFAR-style ResNet-18, the paper's main FL model.

3x3 stride-1 stem without max-pool keeps spatial detail on 32x32 inputs;
adaptive average pooling lets the same network run on any input size
(28x28 MNIST, 224x224 ImageNet samples). Conv layers carry a bias only when
there is no normalization layer to absorb it.
"""

from torch import Tensor, nn

from .norm_layers import make_norm
from .registry import InputShape, register_model


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (projection when shapes change)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: str) -> None:
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=bias)
        self.bn1 = make_norm(norm, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=bias)
        self.bn2 = make_norm(norm, out_ch)
        self.relu = nn.ReLU()
        # Registered after bn2 so module order matches forward order (see bn_layers).
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=bias), make_norm(norm, out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """BasicBlocks [2, 2, 2, 2] with widths 64/128/256/512."""

    def __init__(self, in_ch: int, num_classes: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, 64, 3, 1, 1, bias=norm == "none")
        self.bn1 = make_norm(norm, 64)
        self.relu = nn.ReLU()
        layers: list[nn.Module] = []
        width = 64
        for i, out_ch in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            layers.append(
                nn.Sequential(
                    BasicBlock(width, out_ch, stride, norm), BasicBlock(out_ch, out_ch, 1, norm)
                )
            )
            width = out_ch
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.pool(x).flatten(1))


@register_model("resnet18", default_norm="batch", norms=("batch", "group", "none"))
def build_resnet18(input_shape: InputShape, num_classes: int, *, norm: str) -> nn.Module:
    return ResNet18(input_shape[0], num_classes, norm)
