"""Class fishing (Wen et al. 2022, "Fishing for User Data in Large-Batch Federated Learning").

Weights-only edit of the last ``nn.Linear`` (the classifier): for every class c != target the
weight row is zeroed and the bias raised far above the target's logit. Then

* the non-target logits are constant, so dL/dfeatures = (p_t - 1[y = t]) * w_t;
* every image is classified with high confidence as "some non-target class", so p_t ~ 0:
  non-target images send ~zero gradient into the feature extractor, while target-class
  images (low confidence in their own class) send the full -w_t.

So the gradient of every layer below the classifier is (almost) the gradient of the target
class's images alone: a batch-averaged gradient becomes a "small batch" one that an
inversion attack can invert.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """(name, layer) of the last nn.Linear in ``model`` (the classifier)."""
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found = (name, module)
    if found is None or found[1].bias is None:
        raise ValueError("class fishing needs a last nn.Linear layer with bias")
    return found


@torch.no_grad()
def fish(model: nn.Module, target_class: int, *, bias_boost: float = 50.0) -> nn.Module:
    """Deep copy of ``model`` whose classifier makes ``target_class`` dominate the gradient."""
    fished = copy.deepcopy(model)
    _, layer = last_linear(fished)
    k = layer.out_features
    if not 0 <= target_class < k:
        raise ValueError(f"target_class must be in [0, {k}), got {target_class}")
    others = torch.arange(k) != target_class
    layer.weight[others] = 0.0
    layer.bias[others] = layer.bias[target_class] + bias_boost
    return fished


def _feature_params(model: nn.Module, include_classifier: bool) -> list[nn.Parameter]:
    if include_classifier:
        return [p for p in model.parameters() if p.requires_grad]
    _, layer = last_linear(model)
    skip = {id(p) for p in layer.parameters()}
    return [p for p in model.parameters() if p.requires_grad and id(p) not in skip]


def target_gradient_share(
    model: nn.Module, x: Tensor, y: Tensor, target_class: int, *, include_classifier: bool = False
) -> float:
    """||g_target|| / (||g_target|| + ||g_rest||) of the batch-mean cross-entropy gradient.

    g_target is the contribution of the target-class images to the batch gradient, g_rest
    that of the others (g = g_target + g_rest). By default only the parameters below the
    classifier count (the feature extractor, which gradient inversion inverts); the fished
    classifier rows of other classes still get gradient from their own images.
    """
    params = _feature_params(model, include_classifier)
    losses = F.cross_entropy(model(x), y, reduction="none") / x.shape[0]
    is_t = y == target_class
    if not bool(is_t.any()):
        raise ValueError(f"the batch has no image of class {target_class}")

    def norm(mask: Tensor) -> float:
        if not bool(mask.any()):
            return 0.0
        grads = torch.autograd.grad(losses[mask].sum(), params, retain_graph=True, allow_unused=True)
        return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None)))

    nt, nr = norm(is_t), norm(~is_t)
    return nt / (nt + nr) if nt + nr > 0 else 0.0
