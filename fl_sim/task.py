"""The learning task a run config describes: data, partitions, model.

Server, clients and evaluators each rebuild it from the config (in their own
processes), so it is cached per process and fully determined by the config.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fl_sim.config import RunConfig, config_from_json
from fl_sim.data import Dataset, load_dataset, partition_indices
from fl_sim.models import bn_state_keys, build_model, shared_state_keys


@dataclass(frozen=True, eq=False)
class Task:
    config: RunConfig
    dataset: Dataset
    partitions: tuple[np.ndarray, ...]

    def new_model(self) -> nn.Module:
        """The model at its seeded initial weights (identical in every process)."""
        torch.manual_seed(self.config.seed)
        cfg = self.config.model
        return build_model(
            cfg.name,
            self.dataset.input_shape,
            self.dataset.num_classes,
            norm=cfg.norm,
            mean=self.dataset.mean,
            std=self.dataset.std,
            **cfg.options,
        )

    def shared_keys(self, model: nn.Module) -> list[str]:
        return shared_state_keys(model, fedbn=self.config.federation.fedbn)

    def local_keys(self, model: nn.Module) -> set[str]:
        """State kept on the client: BatchNorm tensors under FedBN, nothing otherwise."""
        return bn_state_keys(model) if self.config.federation.fedbn else set()

    def has_bn(self, model: nn.Module) -> bool:
        return bool(bn_state_keys(model))

    @property
    def test_split(self) -> tuple[torch.Tensor, torch.Tensor]:
        limit = self.config.data.max_test
        x, y = self.dataset.test_x, self.dataset.test_y
        return (x[:limit], y[:limit]) if limit else (x, y)

    def eval_on_clients(self, model: nn.Module) -> bool:
        """FedBN models are only meaningful with each client's own BN layers."""
        mode = self.config.eval.mode
        if mode == "auto":
            return self.config.federation.fedbn and self.has_bn(model)
        return mode == "clients"


@functools.lru_cache(maxsize=4)
def _task_from_json(config_json: str) -> Task:
    config = config_from_json(config_json, driver=False)  # validated where it was loaded; this may be another node
    dataset = load_dataset(
        config.data.name,
        root=config.data.root,
        seed=config.seed,
        test_fraction=config.data.test_fraction,
        image_size=config.data.image_size,
    )
    labels = dataset.train_y.numpy()
    pool = np.arange(len(labels))
    if config.data.max_train is not None and config.data.max_train < len(labels):
        # A seeded subset of the training set (small private sets for attack experiments).
        pool = np.sort(np.random.default_rng([config.seed, 7]).permutation(len(labels))[: config.data.max_train])
    parts = partition_indices(
        labels[pool],
        config.federation.num_clients,
        scheme=config.data.partition,
        alpha=config.data.alpha,
        seed=config.seed,
    )
    return Task(config, dataset, tuple(pool[p] for p in parts))


def load_task(config: RunConfig) -> Task:
    return _task_from_json(config.model_dump_json())


@torch.no_grad()
def evaluate_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> tuple[float, float]:
    """Mean cross-entropy and accuracy in eval mode."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        logits = model(xb)
        loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
    n = max(len(y), 1)
    return loss_sum / n, correct / n
