"""The 20 real test images per dataset that foolbox ships as image files (foolbox/data/).

They are the only CIFAR / ImageNet pixels available offline here. File names encode order and
label: ``cifar10_00_3.png`` is test image 00 with label 3.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from fl_sim.data.dataset import DataError
from fl_sim.data.images import resize_images, to_float_images
from fl_sim.data.packaged import package_dir


@dataclass(frozen=True)
class SampleSet:
    """How one dataset's sample files are named and decoded."""

    prefix: str  # file name prefix in foolbox/data/
    extension: str
    pil_mode: str  # "RGB" or "L"
    num_classes: int


SAMPLE_SETS: dict[str, SampleSet] = {
    "cifar10-sample": SampleSet("cifar10", "png", "RGB", 10),
    "cifar100-sample": SampleSet("cifar100", "png", "RGB", 100),
    "mnist-sample": SampleSet("mnist", "png", "L", 10),
    "fashion-mnist-sample": SampleSet("fashionMNIST", "png", "L", 10),
    "imagenet-sample": SampleSet("imagenet", "jpg", "RGB", 1000),
}


def _sample_files(name: str, spec: SampleSet) -> list[tuple[int, int, Path]]:
    """(index, label, path) for every file of the set, sorted by index."""
    folder = package_dir("foolbox", dataset=name) / "data"
    pattern = re.compile(rf"^{re.escape(spec.prefix)}_(\d+)_(\d+)\.{spec.extension}$")
    found = []
    if folder.is_dir():
        for path in folder.iterdir():
            match = pattern.match(path.name)
            if match:
                found.append((int(match.group(1)), int(match.group(2)), path))
    if len(found) < 2:
        raise DataError(
            f"data.name: dataset '{name}' needs files like {spec.prefix}_<index>_<label>.{spec.extension} "
            f"in {folder}, found {len(found)}; reinstall foolbox==3.3.4 with `make setup`"
        )
    return sorted(found)


@lru_cache(maxsize=None)
def _decoded(name: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 pixels (N, H, W[, C]) and int64 labels, decoded once per process.

    Images whose size differs from the set's most common size (imagenet_10 is 1024x683 among
    512x512 ones) are center-cropped to that aspect ratio and resized, so nothing is stretched.
    """
    spec = SAMPLE_SETS[name]
    files = _sample_files(name, spec)
    images = []
    for _, _, path in files:
        with Image.open(path) as im:
            images.append(im.convert(spec.pil_mode))
    size = Counter(im.size for im in images).most_common(1)[0][0]
    pixels = [
        np.asarray(im if im.size == size else ImageOps.fit(im, size, Image.Resampling.BICUBIC), dtype=np.uint8)
        for im in images
    ]
    labels = np.array([label for _, label, _ in files], dtype=np.int64)
    if labels.max() >= spec.num_classes:
        raise DataError(f"data.name: dataset '{name}' has a label >= {spec.num_classes}; reinstall foolbox")
    return np.stack(pixels), labels


def load_sample_images(name: str, image_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All sample images of ``name`` in index order as fresh tensors (x float32 in [0, 1], y int64).

    ``image_size=None`` keeps the stored resolution (ImageNet samples are 512x512 here, unlike
    ``load_dataset('imagenet-sample')`` which defaults to 224).
    """
    if name not in SAMPLE_SETS:
        choices = ", ".join(sorted(SAMPLE_SETS))
        raise DataError(f"data.name: no sample images for {name!r}; choose one of: {choices}")
    pixels, labels = _decoded(name)
    x = to_float_images(pixels, channels_last=True)
    if image_size is not None:
        x = resize_images(x, image_size)
    return x, torch.from_numpy(labels.copy())
