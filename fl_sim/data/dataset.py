"""The in-memory dataset record every loader returns, and the error type for bad data config.

Datasets here are small enough to live in memory as tensors, so one plain record (rather than
torch ``Dataset`` objects) keeps partitioning, attacks and metrics simple and reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class DataError(ValueError):
    """A user-facing data/config problem; the message is one line naming the config field."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train and test images in [0, 1] with integer labels, plus per-channel train statistics.

    ``eq=False``: tensors have no single truth value, so datasets compare by identity.
    Instances may be shared through the loader cache: treat the tensors as read-only.
    """

    name: str
    train_x: torch.Tensor  # float32, (N, C, H, W), values in [0, 1]
    train_y: torch.Tensor  # int64, (N,)
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]  # per-channel mean of train_x
    std: tuple[float, ...]  # per-channel std of train_x
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.train_x, self.train_y), ("test", self.test_x, self.test_y)):
            if x.dtype != torch.float32 or x.ndim != 4:
                got = f"{x.dtype} {tuple(x.shape)}"
                raise ValueError(f"{self.name}: {split}_x must be float32 (N, C, H, W), got {got}")
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                got = f"{y.dtype} {tuple(y.shape)}"
                raise ValueError(f"{self.name}: {split}_y must be int64 ({x.shape[0]},), got {got}")
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise ValueError(f"{self.name}: train and test images differ in shape")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"{self.name}: {len(self.class_names)} class names for {self.num_classes} classes")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image, as models need it."""
        c, h, w = self.train_x.shape[1:]
        return (int(c), int(h), int(w))

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={len(self.train_y)}, test={len(self.test_y)}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes})"
        )


def build_dataset(
    name: str,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    class_names: tuple[str, ...] | None = None,
) -> Dataset:
    """Make a Dataset, computing mean/std from the train split so test data never leaks into them."""
    mean = train_x.mean(dim=(0, 2, 3))
    std = train_x.std(dim=(0, 2, 3), correction=0)
    return Dataset(
        name=name,
        train_x=train_x.contiguous(),
        train_y=train_y.contiguous(),
        test_x=test_x.contiguous(),
        test_y=test_y.contiguous(),
        num_classes=num_classes,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        class_names=class_names,
    )
