"""Which parameters and buffers leave a client.

FedBN keeps BatchNorm affine parameters and running statistics local;
``num_batches_tracked`` is a counter nobody aggregates, so it is never sent.
"""

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

_COUNTER = "num_batches_tracked"


def bn_layers(model: nn.Module) -> list[nn.Module]:
    """BatchNorm modules in registration order, which our models keep equal to forward order."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def bn_state_keys(model: nn.Module) -> set[str]:
    """All state_dict keys owned by BatchNorm modules (weights, biases, stats, counter)."""
    keys: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm):
            prefix = f"{name}." if name else ""
            keys.update(prefix + key for key in module.state_dict())
    return keys


def shared_state_keys(model: nn.Module, *, fedbn: bool) -> list[str]:
    """Ordered state_dict keys transmitted each round."""
    private = bn_state_keys(model) if fedbn else set()
    return [
        key
        for key in model.state_dict()
        if key.rsplit(".", 1)[-1] != _COUNTER and key not in private
    ]
