"""Which torch device an attack runs on: ``auto`` (the GPU a worker was given, else the CPU), ``cpu``,
``cuda`` or ``cuda:N``.

The spelling is checked where the config is read; whether the device exists is checked in the process
that runs the attack (a Ray worker with ``num_gpus=1`` sees its own GPU, the driver may see none).
"""

from __future__ import annotations

import os
import re

import torch

WORKER_THREADS_ENV = "FL_SIM_WORKER_THREADS"  # a Ray worker's torch threads, set by the Ray engine for every process it starts

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
_SPELLING = re.compile(r"auto|cpu|cuda(:\d{1,2})?")


class DeviceError(ValueError):
    """A device that is misspelt or not present in this process (one line)."""


def check_device(spec: str, option: str = "device") -> str:
    """``spec`` if it is spelt as a device; else DeviceError naming ``option`` and the accepted values."""
    if not isinstance(spec, str) or not _SPELLING.fullmatch(spec):
        raise DeviceError(f"{option}: {spec!r} is not a device; accepted: {DEVICE_CHOICES}")
    return spec


def resolve_device(spec: str = "auto", option: str = "device") -> torch.device:
    """The device ``spec`` names in this process; ``auto`` is the first visible GPU, else the CPU."""
    check_device(spec, option)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{option}: {spec} asked for, but torch sees no CUDA device here; accepted: {DEVICE_CHOICES}")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"{option}: {spec} asked for, but only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


def device_label(device: torch.device) -> str:
    """``cpu``, or ``cuda:0 (NVIDIA H200)``: what a result's metrics record."""
    if device.type != "cuda":
        return str(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


__all__ = ["DEVICE_CHOICES", "DeviceError", "check_device", "device_label", "resolve_device"]


def apply_worker_threads() -> None:
    """Take the torch thread count the Ray engine sets for its processes (clients, attack workers), if set."""
    if os.environ.get(WORKER_THREADS_ENV):
        torch.set_num_threads(int(os.environ[WORKER_THREADS_ENV]))
