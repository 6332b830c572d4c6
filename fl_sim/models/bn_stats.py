"""The per-channel statistics each BatchNorm layer normalises a batch with, captured as the forward pass runs.

Clients record them for the ground truth (the private batch's statistics, what the
paper's ``BN_exact`` threat model grants); attacks record the dummy batch's, with
their graph, for the BatchNorm prior. One capture serves both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

LayerStats = list[tuple[str, Tensor, Tensor]]  # (layer name, mean, biased variance) in forward order


@contextlib.contextmanager
def batch_statistics(model: nn.Module, *, detach: bool = True) -> Iterator[LayerStats]:
    """Each BatchNorm layer's input mean and biased variance per channel, appended in forward order.

    ``detach=False`` keeps the graph, so a prior on them can be differentiated."""
    stats: LayerStats = []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm):

            def hook(_m: nn.Module, inputs: tuple[Tensor, ...], _out: Tensor, name: str = name) -> None:
                x = inputs[0].detach() if detach else inputs[0]
                dims = [0, *range(2, x.dim())]
                stats.append((name, x.mean(dim=dims), x.var(dim=dims, unbiased=False)))

            handles.append(module.register_forward_hook(hook))
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()
