"""Closed-form recovery through a first fully connected layer with bias (no optimisation).

For y = W x + b and one image, dL/dW[i] = dL/db[i] * x, so x = dW[i] / db[i] for every row
with db[i] != 0. For a batch (the paper's Lemma B.1) each row of dW is sum_n dL/db_n[i] x_n:
a linear combination of the images; rows normalised by db are candidate (mixed) images.
The model's Normalize is undone so results are in image space [0, 1].
"""

from __future__ import annotations

from torch import Tensor, nn

from adversary.attacks.threat_model import AttackInputs


def first_linear(model: nn.Module, purpose: str = "analytic recovery") -> tuple[str, nn.Linear, nn.Module | None]:
    """(name, layer, normalize) of the first Linear, which must only follow Normalize/Flatten."""
    normalize = getattr(model, "normalize", None)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            if module.bias is None:
                raise ValueError(f"{purpose} needs a bias on the first linear layer {name!r}")
            return name, module, normalize
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            break
    raise ValueError(f"{purpose} needs a model whose first layer (after Normalize) is nn.Linear")


def _denormalize(x: Tensor, normalize: nn.Module | None, shape: tuple[int, ...]) -> Tensor:
    x = x.reshape(-1, *shape)
    if normalize is not None:
        x = x * normalize.std.to(x) + normalize.mean.to(x)
    return x


def _first_layer_grads(inputs: AttackInputs) -> tuple[Tensor, Tensor, nn.Module | None]:
    name, _, normalize = first_linear(inputs.model)
    grads = inputs.observed_gradient_like()
    return grads[f"{name}.weight"].detach().double(), grads[f"{name}.bias"].detach().double(), normalize


def recover_single_image(inputs: AttackInputs, rel_threshold: float = 0.1) -> Tensor:
    """One image [1, C, H, W]: the |db|-weighted average of dW[i]/db[i] over rows with |db| >= rel_threshold * max|db|."""
    dw, db, normalize = _first_layer_grads(inputs)
    keep = db.abs() >= rel_threshold * db.abs().max()
    if not bool(keep.any()) or float(db.abs().max()) == 0.0:
        raise ValueError("analytic recovery: the first-layer bias gradient is zero")
    # sum_i db_i dW_i / sum_i db_i^2 is the least-squares x for dW_i = db_i x: stable, exact for one image
    x = (db[keep, None] * dw[keep]).sum(0) / db[keep].pow(2).sum()
    return _denormalize(x, normalize, inputs.image_shape).float()


def linear_combination_candidates(inputs: AttackInputs, rel_threshold: float = 1e-3) -> Tensor:
    """Lemma B.1 view for batches: dW[i]/db[i] for every row with a non-negligible db, [K, C, H, W].

    Each candidate is a convex-like combination of the private images (a single image where
    only one image activates neuron i); clustering or deduplicating them is left to the caller.
    """
    dw, db, normalize = _first_layer_grads(inputs)
    keep = db.abs() >= rel_threshold * db.abs().max()
    return _denormalize(dw[keep] / db[keep, None], normalize, inputs.image_shape).float()
