"""Local computation of a client: one gradient (FedSGD) or several SGD steps (FedAvg).

Pure PyTorch. Each step also captures what an evaluator needs to score an attack
later: the batch itself and the BatchNorm statistics of its forward pass.

Labels may be hard (int64, shape (N,)) or soft (float, shape (N, num_classes),
e.g. mixed labels from MixUp/InstaHide); the loss is cross-entropy either way
(with soft targets: ``-sum_c y_c log softmax(z)_c``, averaged over the batch).
A defense may replace how a batch's gradient is computed by passing ``grad_fn``
(same signature and result as :func:`gradient_step`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fl_sim.models.bn_stats import batch_statistics


@contextlib.contextmanager
def capture_bn_batch_stats(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """The private batch's statistics the paper's ``BN_exact`` threat model grants, keyed
    ``<layer name>.mean`` / ``<layer name>.var`` (filled when the forward pass has run)."""
    stats: dict[str, torch.Tensor] = {}
    with batch_statistics(model) as layers:
        yield stats
    for name, mean, var in layers:
        stats[f"{name}.mean"] = mean
        stats[f"{name}.var"] = var


@dataclass
class StepRecord:
    """The private side of one local step (ground truth for evaluation)."""

    images: torch.Tensor
    labels: torch.Tensor
    indices: np.ndarray
    bn_stats: dict[str, torch.Tensor] = field(default_factory=dict)
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. defense keys, encoded images

    def as_arrays(self) -> dict[str, np.ndarray]:
        labels = self.labels.detach().cpu().numpy()
        arrays = {
            "images": self.images.detach().cpu().numpy().astype(np.float32),
            "labels": labels.astype(np.float32 if labels.dtype.kind == "f" else np.int64),
            "indices": np.asarray(self.indices, dtype=np.int64),
        }
        arrays.update({f"bn/{k}": v.cpu().numpy().astype(np.float32) for k, v in self.bn_stats.items()})
        arrays.update(self.extra)
        return arrays


@dataclass
class LocalResult:
    loss: float
    num_examples: int
    compute_s: float
    steps: list[StepRecord]


def sample_batches(
    indices: np.ndarray, *, steps: int, batch_size: int, seed: int, round: int, partition: int
) -> list[np.ndarray]:
    """Batches for one round: consecutive slices of seeded shuffles of the partition.

    Seeded by (seed, round, partition) so both engines and repeated runs draw the
    same batches; a batch never repeats an index within itself.
    """
    rng = np.random.default_rng([seed, round, partition])
    size = min(batch_size, len(indices))
    order = rng.permutation(indices)
    batches, pos = [], 0
    for _ in range(steps):
        if pos + size > len(order):
            order, pos = rng.permutation(indices), 0
        batches.append(order[pos : pos + size])
        pos += size
    return batches


def gradient_step(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, params: dict[str, nn.Parameter]
) -> tuple[float, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Loss, gradients w.r.t. ``params`` and BN batch statistics for one batch.

    ``y``: hard labels (N,) or soft labels (N, num_classes)."""
    model.train()
    with capture_bn_batch_stats(model) as stats:
        loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    out = {name: (g if g is not None else torch.zeros_like(p)) for (name, p), g in zip(params.items(), grads)}
    return float(loss.detach()), out, dict(stats)


GradFn = Callable[
    [nn.Module, torch.Tensor, torch.Tensor, dict[str, nn.Parameter]],
    tuple[float, dict[str, torch.Tensor], dict[str, torch.Tensor]],
]


def fedsgd_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    indices: np.ndarray,
    *,
    lr: float,
    local_params: set[str],
    grad_fn: GradFn | None = None,
) -> tuple[LocalResult, dict[str, torch.Tensor]]:
    """One gradient on one batch. Parameters kept local (FedBN) are stepped here;
    the others' gradients are returned for the server to average."""
    start = time.perf_counter()
    params = dict(model.named_parameters())
    loss, grads, stats = (grad_fn or gradient_step)(model, x, y, params)
    with torch.no_grad():
        for name in local_params & params.keys():
            params[name].sub_(lr * grads[name])
    shared = {k: v for k, v in grads.items() if k not in local_params}
    step = StepRecord(x, y, indices, stats)
    return LocalResult(loss, len(y), time.perf_counter() - start, [step]), shared


def fedavg_steps(
    model: nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor, np.ndarray]],
    *,
    lr: float,
    grad_fn: GradFn | None = None,
) -> LocalResult:
    """Plain SGD over the given batches (the local steps of FedAvg).

    With ``grad_fn`` each step's gradient comes from it (e.g. DP-SGD) instead of backprop."""
    start = time.perf_counter()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    records, total = [], 0.0
    for x, y, idx in batches:
        optimizer.zero_grad(set_to_none=True)
        if grad_fn is None:
            with capture_bn_batch_stats(model) as stats:
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            loss_value = float(loss.detach())
        else:
            params = dict(model.named_parameters())
            loss_value, grads, stats = grad_fn(model, x, y, params)
            for name, p in params.items():
                p.grad = grads[name].detach().to(p.dtype)
        optimizer.step()
        total += loss_value
        records.append(StepRecord(x, y, idx, dict(stats)))
    return LocalResult(total / len(batches), sum(len(b[1]) for b in batches), time.perf_counter() - start, records)
