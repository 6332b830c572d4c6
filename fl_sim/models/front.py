"""A block in front of a model whose tensors keep their names.

A server-defined architecture inserts a block at the input (:mod:`.server_defined`); an audited
app's input normalisation, done in its data pipeline, is put in front of its model so the attack
works on images in [0, 1]. Either way the model's state keys must not change: messages name the
agreed tensors, and FedBN keeps the BatchNorm state under its keys.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from .errors import ModelError


class WithFront(nn.Module):
    """``body(front(x))`` whose state keys are the body's own plus ``<name>.*`` of the front block.

    The body's children, parameters and buffers are registered here under their own
    names (the same objects: training either trains both), so the agreed tensors and
    FedBN's local state keep their keys; ``add_module`` on the body itself would not
    do, as an ``nn.Sequential`` would run the block as one more layer.
    """

    def __init__(self, body: nn.Module, name: str, front: nn.Module, what: str = "model") -> None:
        super().__init__()
        object.__setattr__(self, "_body", body)
        object.__setattr__(self, "_front", front)
        for child_name, child in body.named_children():
            self.add_module(child_name, child)
        for p_name, param in body._parameters.items():
            self.register_parameter(p_name, param)
        for b_name, buf in body._buffers.items():
            self.register_buffer(b_name, buf, persistent=b_name not in body._non_persistent_buffers_set)
        if name in self._modules or name in self._parameters or name in self._buffers:
            raise ModelError(f"{what}: the model already has a member {name!r}")
        self.add_module(name, front)

    @property
    def body(self) -> nn.Module:
        return self._body

    def forward(self, x: Tensor) -> Tensor:
        return self._body(self._front(x))


class Transform(nn.Module):
    """A user's differentiable input transform (``module:fn``, images in [0, 1] -> model input) as a module."""

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)
