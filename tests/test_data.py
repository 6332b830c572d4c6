"""Tests for fl_sim.data: offline dataset loading and federated partitioning."""

from __future__ import annotations

import gzip
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_sim.data import (
    DataError,
    Dataset,
    available_datasets,
    label_histogram,
    load_dataset,
    load_sample_images,
    partition_indices,
)
from fl_sim.data.sources import FASHION_MNIST_DEBIAN_DIR, FASHION_MNIST_FILES

SAMPLE_SHAPES = {
    "cifar10-sample": ((3, 32, 32), 10),
    "cifar100-sample": ((3, 32, 32), 100),
    "mnist-sample": ((1, 28, 28), 10),
    "fashion-mnist-sample": ((1, 28, 28), 10),
    "imagenet-sample": ((3, 224, 224), 1000),
}
HAVE_DEBIAN_FASHION = all((FASHION_MNIST_DEBIAN_DIR / f).is_file() for f in FASHION_MNIST_FILES)


def check_dataset(ds: Dataset, shape: tuple[int, int, int], num_classes: int) -> None:
    assert ds.input_shape == shape
    assert ds.num_classes == num_classes
    for x, y in ((ds.train_x, ds.train_y), (ds.test_x, ds.test_y)):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == shape and len(x) == len(y) > 0
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        assert 0 <= int(y.min()) and int(y.max()) < num_classes
    assert len(ds.mean) == len(ds.std) == shape[0]
    assert np.allclose(ds.mean, ds.train_x.mean(dim=(0, 2, 3)).numpy(), atol=1e-5)
    assert all(s > 0 for s in ds.std)
    if ds.class_names is not None:
        assert len(ds.class_names) == num_classes


# --- loading -----------------------------------------------------------------------------


def test_available_datasets_lists_builtins() -> None:
    names = available_datasets()
    assert names == sorted(names)
    assert {"cifar10", "mnist-5k", "fashion-mnist", *SAMPLE_SHAPES} <= set(names)


@pytest.mark.parametrize("name", sorted(SAMPLE_SHAPES))
def test_sample_datasets_load(name: str) -> None:
    shape, num_classes = SAMPLE_SHAPES[name]
    ds = load_dataset(name)
    check_dataset(ds, shape, num_classes)
    assert len(ds.train_y) + len(ds.test_y) == 20
    assert len(ds.test_y) == 4  # round(0.2 * 20)


def test_cifar10_sample_labels_match_file_names() -> None:
    folder = Path(importlib.util.find_spec("foolbox").submodule_search_locations[0]) / "data"
    expected = sorted(
        (int(m.group(1)), int(m.group(2)))
        for p in folder.iterdir()
        if (m := re.fullmatch(r"cifar10_(\d+)_(\d+)\.png", p.name))
    )
    x, y = load_sample_images("cifar10-sample")
    assert x.shape == (20, 3, 32, 32)
    assert [i for i, _ in expected] == list(range(20))
    assert y.tolist() == [label for _, label in expected]
    assert y[:4].tolist() == [3, 8, 8, 0]  # the first CIFAR-10 test images: cat, ship, ship, airplane


def test_sample_images_are_fresh_tensors_and_resizable() -> None:
    x1, _ = load_sample_images("mnist-sample")
    x1.zero_()
    x2, _ = load_sample_images("mnist-sample")
    assert float(x2.max()) == 1.0
    x3, _ = load_sample_images("imagenet-sample")
    assert x3.shape == (20, 3, 512, 512)  # native size; imagenet_10 (1024x683) is center-cropped
    x4, _ = load_sample_images("cifar10-sample", image_size=64)
    assert x4.shape == (20, 3, 64, 64)


def test_sample_split_is_seeded_and_partitions_the_20_images() -> None:
    x_all, y_all = load_sample_images("cifar10-sample")
    a = load_dataset("cifar10-sample", seed=1)
    b = load_dataset("cifar10-sample", seed=1, test_fraction=0.2)
    c = load_dataset("cifar10-sample", seed=2)
    assert torch.equal(a.test_x, b.test_x)
    assert not torch.equal(a.test_x, c.test_x)
    together = torch.cat([a.train_x, a.test_x]).flatten(1)
    # every original image appears exactly once
    matches = (together[:, None, :] == x_all.flatten(1)[None, :, :]).all(-1)
    assert matches.sum(0).tolist() == [1] * 20
    tiny = load_dataset("cifar10-sample", test_fraction=0.01)
    assert len(tiny.test_y) == 1 and len(tiny.train_y) == 19


def test_load_dataset_is_cached() -> None:
    assert load_dataset("mnist-sample", seed=3) is load_dataset("mnist-sample", seed=3)


def test_image_size_resizes_everything() -> None:
    ds = load_dataset("mnist-sample", image_size=32)
    check_dataset(ds, (1, 32, 32), 10)
    big = load_dataset("imagenet-sample", image_size=64)
    check_dataset(big, (3, 64, 64), 1000)
    assert big.class_names is not None and big.class_names[243] == "bull mastiff"


def test_mnist_5k() -> None:
    ds = load_dataset("mnist-5k")
    check_dataset(ds, (1, 28, 28), 10)
    all_y = torch.cat([ds.train_y, ds.test_y])
    assert len(all_y) == 5000
    assert torch.bincount(all_y).tolist() == [500] * 10
    assert torch.bincount(ds.test_y).tolist() == [100] * 10  # stratified at 0.2
    assert 0.10 < ds.mean[0] < 0.16  # MNIST's well-known mean is ~0.13


def test_mnist_5k_split_is_deterministic_per_seed() -> None:
    a, b = load_dataset("mnist-5k", seed=5), load_dataset("mnist-5k", seed=6)
    a2 = load_dataset("mnist-5k", seed=5, root=None, test_fraction=0.2, image_size=None)
    assert a is a2
    assert not torch.equal(a.test_x, b.test_x)
    assert len(load_dataset("mnist-5k", test_fraction=0.5).test_y) == 2500


@pytest.mark.skipif(
    not HAVE_DEBIAN_FASHION,
    reason=f"Fashion-MNIST IDX files absent from {FASHION_MNIST_DEBIAN_DIR} "
    "(apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_debian() -> None:
    ds = load_dataset("fashion-mnist")
    check_dataset(ds, (1, 28, 28), 10)
    assert len(ds.train_y) == 60000 and len(ds.test_y) == 10000
    assert torch.bincount(ds.train_y).tolist() == [6000] * 10
    assert torch.bincount(ds.test_y).tolist() == [1000] * 10


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_from_root_parses_idx(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    train_img = rng.integers(0, 256, size=(12, 28, 28))
    test_img = rng.integers(0, 256, size=(5, 28, 28))
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", train_img)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(12) % 10)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", test_img)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(5))
    ds = load_dataset("fashion-mnist", root=tmp_path)
    check_dataset(ds, (1, 28, 28), 10)
    assert torch.equal(ds.train_x[:, 0], torch.from_numpy(train_img).float() / 255)
    assert ds.test_y.tolist() == [0, 1, 2, 3, 4]


def test_fashion_mnist_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", root=tmp_path)
    msg = str(err.value)
    assert msg.startswith("data.root:") and "\n" not in msg
    assert all(f in msg for f in FASHION_MNIST_FILES)
    assert "apt-get install dataset-fashion-mnist" in msg


def test_cifar10_without_root_names_data_root() -> None:
    expected = r"^data\.root: .*cifar-10-batches-py.*data_batch_1\.\.5.*test_batch.*batches\.meta"
    with pytest.raises(DataError, match=expected):
        load_dataset("cifar10")


def test_cifar10_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", root=tmp_path)
    msg = str(err.value)
    assert msg.startswith("data.root:") and "\n" not in msg
    for f in ("data_batch_1", "data_batch_5", "test_batch", "batches.meta", "cifar-10-batches-py"):
        assert f in msg


def test_cifar10_corrupt_files(tmp_path: Path) -> None:
    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (batches / f).write_bytes(b"not a pickle")
    with pytest.raises(DataError, match=r"^data\.root: .*checksum"):
        load_dataset("cifar10", root=tmp_path)


def test_unknown_dataset_lists_choices() -> None:
    with pytest.raises(DataError) as err:
        load_dataset("imagenet-full")
    msg = str(err.value)
    assert msg.startswith("data.name: unknown dataset 'imagenet-full'; choose one of: ")
    assert all(name in msg for name in available_datasets())


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"test_fraction": 0.0}, "data.test_fraction"), ({"test_fraction": 1.5}, "data.test_fraction"),
     ({"image_size": 0}, "data.image_size")],
)  # fmt: skip
def test_bad_arguments_name_their_field(kwargs: dict, field: str) -> None:
    with pytest.raises(DataError, match=rf"^{re.escape(field)}:"):
        load_dataset("mnist-sample", **kwargs)


def test_sample_images_unknown_name() -> None:
    with pytest.raises(DataError, match="choose one of: cifar10-sample"):
        load_sample_images("cifar10")


# --- partitioning ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_labels() -> np.ndarray:
    ds = load_dataset("mnist-5k")
    return ds.train_y.numpy()


def assert_exact_cover(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n
    assert np.array_equal(np.sort(joined), np.arange(n))
    assert all(p.dtype == np.int64 for p in parts)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_partition_disjoint_covering_deterministic(mnist_labels: np.ndarray, scheme: str) -> None:
    parts = partition_indices(mnist_labels, 10, scheme=scheme, alpha=0.5, seed=0)
    assert len(parts) == 10
    assert_exact_cover(parts, len(mnist_labels))
    again = partition_indices(mnist_labels, 10, scheme=scheme, alpha=0.5, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = partition_indices(mnist_labels, 10, scheme=scheme, alpha=0.5, seed=1)
    assert any(not np.array_equal(a, b) for a, b in zip(parts, other))


def test_iid_partition_is_balanced(mnist_labels: np.ndarray) -> None:
    sizes = [len(p) for p in partition_indices(mnist_labels, 7, scheme="iid")]
    assert max(sizes) - min(sizes) <= 1


def _mean_entropy(hist: np.ndarray) -> float:
    p = hist / hist.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    return float(ent.mean())


def test_small_alpha_is_more_skewed(mnist_labels: np.ndarray) -> None:
    def entropy(alpha: float) -> float:
        parts = partition_indices(mnist_labels, 10, scheme="dirichlet", alpha=alpha, seed=0, min_size=10)
        return _mean_entropy(label_histogram(mnist_labels, parts, 10))

    skewed, mild, near_iid = entropy(0.1), entropy(1.0), entropy(100.0)
    assert skewed < mild < near_iid
    assert near_iid > 0.95 * np.log(10)
    iid = partition_indices(mnist_labels, 10, scheme="iid")
    assert _mean_entropy(label_histogram(mnist_labels, iid, 10)) > 0.95 * np.log(10)


def test_dirichlet_respects_min_size(mnist_labels: np.ndarray) -> None:
    parts = partition_indices(mnist_labels, 20, scheme="dirichlet", alpha=0.1, seed=3, min_size=50)
    assert min(len(p) for p in parts) >= 50
    assert_exact_cover(parts, len(mnist_labels))


def test_label_histogram_counts() -> None:
    labels = np.array([0, 1, 1, 2, 2, 2])
    hist = label_histogram(labels, [np.array([0, 1]), np.array([2, 3, 4, 5])], 4)
    assert hist.tolist() == [[1, 1, 0, 0], [0, 1, 3, 0]]


def test_partition_errors_name_fields() -> None:
    labels = np.arange(5) % 2
    with pytest.raises(DataError, match=r"^federation\.num_clients: 6 clients but only 5"):
        partition_indices(labels, 6)
    with pytest.raises(DataError, match=r"^federation\.num_clients:"):
        partition_indices(labels, 0)
    with pytest.raises(DataError, match=r"^data\.alpha:"):
        partition_indices(labels, 2, scheme="dirichlet", alpha=0.0)
    with pytest.raises(DataError, match=r"^data\.partition: unknown scheme 'zipf'; choose one of: dirichlet, iid"):
        partition_indices(labels, 2, scheme="zipf")
    # tiny alpha hands each of the 2 classes to ~1 client, so 10 clients never all get 2 examples
    with pytest.raises(DataError, match=r"^data\.alpha: .*raise data\.alpha or lower federation\.num_clients"):
        partition_indices(np.arange(20) % 2, 10, scheme="dirichlet", alpha=0.001, min_size=2)


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.integers(0, 9), min_size=1, max_size=200),
    data=st.data(),
    seed=st.integers(0, 2**31 - 1),
    alpha=st.floats(0.05, 50.0),
)
def test_partition_always_covers(labels: list[int], data: st.DataObject, seed: int, alpha: float) -> None:
    num_clients = data.draw(st.integers(1, len(labels)))
    iid = partition_indices(labels, num_clients, scheme="iid", seed=seed)
    assert_exact_cover(iid, len(labels))
    assert min(len(p) for p in iid) >= 1
    skew = partition_indices(labels, num_clients, scheme="dirichlet", alpha=alpha, seed=seed, min_size=0)
    assert len(skew) == num_clients
    assert_exact_cover(skew, len(labels))
    hist = label_histogram(labels, skew, 10)
    assert hist.sum() == len(labels)
