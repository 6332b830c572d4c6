"""Attacking the traffic of a foreign (audited) Flower app.

The attacker rebuilds the app's model from a factory the user names
(``module:factory``) and maps the message's tensors onto it: by name when the
message uses state-dict keys (Message API apps), else by order and shape (legacy
``Parameters`` lists, which follow ``state_dict()`` order). There is no ground
truth: what the traffic does not reveal (batch size, local steps) must be
granted through the threat model, and the results say which values were taken
from the traffic, granted, or assumed.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adversary.observation import Observation, find_instruction
from adversary.traffic_log import TrafficLog, TrafficLogError
from fl_sim.rundir import CONFIG_JSON


class ForeignModelError(ValueError):
    """The model factory or the tensor mapping does not fit; one line."""


def audit_settings(run_dir: str | Path) -> dict[str, Any] | None:
    """The audit's resolved config, or None for fl-sim's own runs."""
    config = json.loads((Path(run_dir) / CONFIG_JSON).read_text())
    return config if config.get("kind") == "audit" else None


def load_factory(ref: str, root: str | None) -> Any:
    if ":" not in ref:
        raise ForeignModelError(f"--model: expected module:factory, got {ref!r}")
    if root and root not in sys.path:
        sys.path.insert(0, root)
    module_name, _, attr = ref.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ForeignModelError(f"--model: cannot load {ref!r} ({type(exc).__name__}: {exc})") from None


def _main_record(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The record holding the model (the one with the most tensors), keys without the record name."""
    records: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        record, _, key = name.rpartition("/")
        records.setdefault(record, {})[key] = tensor
    if not records:
        return {}
    return max(records.values(), key=len)


def map_onto_model(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Message tensors as a state dict of ``model``; by name, else by order and shape."""
    state = model.state_dict()
    record = _main_record(tensors)
    if record and set(record) <= set(state):
        bad = [f"{k} {tuple(v.shape)} vs {tuple(state[k].shape)}" for k, v in record.items() if v.shape != state[k].shape]
        if bad:
            raise ForeignModelError("--model: shapes differ: " + "; ".join(bad[:4]))
        return dict(record)
    if record and all(k.isdigit() for k in record):
        ordered = [record[k] for k in sorted(record, key=int)]
        keys = list(state)
        if len(ordered) != len(keys):
            raise ForeignModelError(f"--model: the message has {len(ordered)} arrays, the model's state_dict {len(keys)}")
        bad = [f"#{i} {tuple(a.shape)} vs {k} {tuple(state[k].shape)}" for i, (a, k) in enumerate(zip(ordered, keys))
               if a.shape != state[k].shape]
        if bad:
            raise ForeignModelError("--model: arrays do not match the model in order: " + "; ".join(bad[:4]))
        return dict(zip(keys, ordered))
    missing = sorted(set(record) - set(state))[:4]
    raise ForeignModelError(f"--model: message tensors {missing} are not in the model (it has e.g. {list(state)[:4]})")


def _num_classes(model: nn.Module) -> int:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ForeignModelError("--model: no nn.Linear classifier found to read the number of classes from")
    return linears[-1].out_features


def _lr_from(config: dict[str, Any]) -> float | None:
    for key, value in config.items():
        if key.rsplit("/", 1)[-1] in ("lr", "learning-rate", "learning_rate") and isinstance(value, (int, float)):
            return float(value)
    return None


def observe_foreign(run_dir: str | Path, reply_id: int, *, model_ref: str, input_shape: tuple[int, int, int],
                    update_kind: str = "weights") -> Observation:
    settings = audit_settings(run_dir) or {}
    factory = load_factory(model_ref, (settings.get("app") or {}).get("root"))
    with TrafficLog.open(run_dir) as log:
        reply = log.message(reply_id)
        if reply.direction != "up" or reply.message_type != "train":
            raise TrafficLogError(f"MSG_ID: message {reply_id} is a {reply.direction} {reply.message_type} message, not a client update")
        instruction = find_instruction(log, reply)
        sent, received = log.tensors(instruction.id), log.tensors(reply.id)
    model = factory()
    model.load_state_dict(map_onto_model(model, sent))
    update = map_onto_model(model, received)
    metrics = {k.rsplit("/", 1)[-1]: v for k, v in reply.metrics.items()}
    lr = _lr_from(instruction.config)
    return Observation(
        reply=reply,
        instruction=instruction,
        model=model,
        update={k: v.float() for k, v in update.items() if v.is_floating_point()},
        update_kind=update_kind,
        num_examples=None,  # apps report their dataset size, not the batch: must be granted
        local={"lr": lr, "local_steps": 1, "batch_size": None,
               "sources": {"lr": "traffic" if lr is not None else "unknown", "local_steps": "assumed 1",
                           "num_examples_reported": metrics.get("num-examples")}},
        image_shape=tuple(input_shape),  # type: ignore[arg-type]
        num_classes=_num_classes(model),
        foreign=True,
    )


def nearest_lpips(recon: torch.Tensor, candidates: torch.Tensor, chunk: int = 256) -> list[float]:
    """For each reconstruction, the LPIPS to its nearest image among ``candidates``."""
    from adversary.metrics import lpips_distance

    best = []
    for r in recon.clamp(0, 1):
        dists = []
        for start in range(0, len(candidates), chunk):
            block = candidates[start : start + chunk]
            with torch.no_grad():
                dists.append(lpips_distance(r.expand_as(block).contiguous(), block))
        best.append(float(torch.cat(dists).min()))
    return best
