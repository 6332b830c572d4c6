"""Attacks follow the device they are given: spelling checked up front, inputs moved whole, results back on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from adversary.attacks import AttackInputs
from adversary.methods import METHODS, build_method
from adversary.methods.base import Reconstruction
from app.cli import main
from fl_sim.config import ConfigError, RunConfig
from fl_sim.devices import DeviceError, check_device, resolve_device

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="asserts what happens where torch sees no GPU")


@pytest.mark.parametrize("spec", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_device_spellings_accepted(spec: str) -> None:
    assert check_device(spec) == spec


@pytest.mark.parametrize("spec", ["gpu", "CUDA", "cuda:", "cuda:x", "mps", "", "cpu "])
def test_misspelt_device_is_one_line_naming_the_option(spec: str) -> None:
    with pytest.raises(DeviceError, match=r"^adversary\.device: .* accepted: auto, cpu, cuda or cuda:N$"):
        check_device(spec, "adversary.device")


@NO_GPU
def test_auto_is_the_cpu_without_a_gpu_and_cuda_is_refused() -> None:
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceError, match="--device: cuda asked for, but torch sees no CUDA device"):
        resolve_device("cuda", "--device")


def _bn_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))


def test_inputs_move_whole_and_leave_the_received_model_alone() -> None:
    model = _bn_model()
    inputs = AttackInputs(model=model, update={n: torch.randn_like(p) for n, p in model.named_parameters()},
                          image_shape=(1, 6, 6), num_classes=3, labels=torch.tensor([1]),
                          bn_exact=[(torch.zeros(2), torch.ones(2))], sign_center=torch.zeros(1, 1, 1, 1),
                          extra={"running_stats": {"1": [torch.zeros(2), torch.ones(2)]}, "note": "kept"})
    moved = inputs.to("meta")  # a device every machine has: no memory, but every tensor says where it is
    tensors = [*moved.model.parameters(), *moved.model.buffers(), *moved.update.values(), moved.labels,
               *moved.bn_exact[0], *moved.bn_proxy[0], moved.sign_center, *moved.extra["running_stats"]["1"]]
    assert tensors and all(t.device.type == "meta" for t in tensors)
    assert moved.extra["note"] == "kept" and moved.image_shape == (1, 6, 6) and moved.num_classes == 3
    assert all(p.device.type == "cpu" for p in model.parameters()) and inputs.update[next(iter(inputs.update))].device.type == "cpu"
    assert inputs.to("cpu") is inputs


def test_optimisation_runs_on_the_jobs_device_closed_forms_on_the_cpu() -> None:
    assert build_method("inverting-gradients").accelerated
    assert not METHODS.lookup("imprint").accelerated and not METHODS.lookup("trap-weights").accelerated


def test_reconstruction_comes_back_detached_to_the_cpu() -> None:
    images = torch.rand(1, 1, 2, 2, requires_grad=True)
    back = Reconstruction(images * 1, torch.zeros(1, dtype=torch.long), [1.0], {"objective": 0.5}).cpu()
    assert back.images.device.type == "cpu" and not back.images.requires_grad
    assert torch.equal(back.images, images.detach()) and back.info == {"objective": 0.5} and back.loss_curve == [1.0]


def test_config_refuses_a_misspelt_device(tmp_path: Path) -> None:
    with pytest.raises(Exception, match=r"adversary\.device: 'gpu' is not a device"):
        RunConfig.model_validate({"adversary": {"device": "gpu"}})


@NO_GPU
def test_attack_cli_refuses_cuda_without_a_gpu_before_anything_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["attack", str(tmp_path / "no-such-run"), "--msg", "1", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device: cuda asked for" in err[0]


@NO_GPU
def test_run_refuses_cuda_workers_without_a_gpu(tiny) -> None:
    from app.simulation import validate

    config = tiny("adversary.role=eavesdropper", "tap.enabled=true", "adversary.device=cuda")
    with pytest.raises(ConfigError, match="adversary.device: cuda asked for"):
        validate(config)
