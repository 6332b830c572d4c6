"""Architectures the server defines: layers it inserts into the agreed model.

Some deployments let the server ship the model definition each round (a model file
or graph), not just its weights. Then a malicious server can insert layers of its
choosing, as in Fowl et al.'s imprint attack. This module is the client's side of
that feature: it turns the instruction's ``architecture`` spec into a model the
client can train. Clients accept specs only when ``federation.model_from_server``
says the deployment works this way; otherwise they refuse the round.

Spec (JSON in the instruction config under :data:`ARCHITECTURE_KEY`)::

    {"insert": [{"kind": "input-residual", "name": "input_block", "hidden": 128}]}

``input-residual``: ``x + dec(relu(enc(flatten(x)))).view_as(x)`` applied to the raw
input (before the model's Normalize), with ``enc: Linear(d, hidden)`` and
``dec: Linear(hidden, d, bias=False)``. Its tensors travel under ``<name>.enc.weight``,
``<name>.enc.bias``, ``<name>.dec.weight`` next to the model's own, whose names do
not change (so FedBN state and the agreed tensors keep their keys).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .errors import ModelError
from .front import WithFront

ARCHITECTURE_KEY = "architecture"
INSERT_KINDS = ("input-residual",)


class InputResidualBlock(nn.Module):
    """``x + dec(relu(enc(flatten(x))))`` reshaped like ``x``: a block a server can insert at the input."""

    def __init__(self, input_shape: Sequence[int], hidden: int) -> None:
        super().__init__()
        if hidden < 1:
            raise ModelError(f"architecture: input-residual hidden must be >= 1, got {hidden}")
        self.input_shape = tuple(int(s) for s in input_shape)
        d = math.prod(self.input_shape)
        self.hidden = int(hidden)
        self.enc = nn.Linear(d, self.hidden, bias=True)
        self.dec = nn.Linear(self.hidden, d, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.enc(x.flatten(1)))
        return x + self.dec(h).view_as(x)


def architecture_spec(inserts: list[dict[str, Any]]) -> str:
    """The JSON spec for a list of inserted blocks (validated)."""
    spec = {"insert": list(inserts)}
    parse_spec(json.dumps(spec))
    return json.dumps(spec, sort_keys=True)


def parse_spec(text: str) -> list[dict[str, Any]]:
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelError(f"architecture: the server's spec is not JSON ({exc})") from None
    inserts = spec.get("insert") if isinstance(spec, dict) else None
    if not isinstance(inserts, list) or not inserts:
        raise ModelError("architecture: the server's spec needs a non-empty 'insert' list")
    for entry in inserts:
        if not isinstance(entry, dict) or entry.get("kind") not in INSERT_KINDS:
            raise ModelError(f"architecture: insert kind must be one of {', '.join(INSERT_KINDS)}, got {entry!r}")
        if not str(entry.get("name", "")).isidentifier():
            raise ModelError(f"architecture: insert name must be an identifier, got {entry.get('name')!r}")
    if len(inserts) > 1:
        raise ModelError("architecture: at most one inserted block is supported")
    return inserts


def apply_architecture(model: nn.Module, spec: str, input_shape: Sequence[int]) -> nn.Module:
    """A copy of ``model`` with the spec's block inserted at the input (fresh weights: load the server's after).

    The block acts on the raw input, before anything else in the model (its Normalize included)."""
    (entry,) = parse_spec(spec)
    block = InputResidualBlock(input_shape, int(entry.get("hidden", 0)))
    return WithFront(copy.deepcopy(model), str(entry["name"]), block, what="architecture")


def inserted_keys(model: nn.Module, spec: str) -> list[str]:
    """State keys the spec's blocks add to ``model`` (in state_dict order)."""
    (entry,) = parse_spec(spec)
    prefix = f"{entry['name']}."
    return [k for k in model.state_dict() if k.startswith(prefix)]
