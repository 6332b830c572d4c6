"""One federated run end to end: validate, make the run directory, simulate, summarise."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from adversary.attacks import ConfigError as AttackConfigError
from adversary.attacks import preset_config
from adversary.malicious.detection import vetting_detection
from adversary.malicious.server import MaliciousServerError
from adversary.malicious.wrapper import strategy_from_config
from adversary.role_process import check_plugin
from adversary.roles import RoleError, check_role
from adversary.service import role_faults, role_process_note
from app.engine import ground_truth_sink, run_engine
from app.wiring import role_context, server_app_for
from clients.app import make_client_app
from clients.defenses import build_defenses, public_encoding
from fl_sim.config import ConfigError, RunConfig
from fl_sim.data import DataError, label_histogram
from fl_sim.deployment import simulation_card
from fl_sim.devices import DeviceError, resolve_device
from fl_sim.ground_truth import ground_truth_held_open
from fl_sim.models import ModelError
from fl_sim.rundir import PARTITIONS_JSON, SUMMARY_JSON, create_run_dir, write_json_atomic
from fl_sim.task import Task, load_task
from server.rounds import TrainingResult


@dataclass
class RunOutcome:
    run_dir: Path
    result: TrainingResult
    wall_s: float


def validate(config: RunConfig) -> None:
    """Everything that can fail on user input, checked before any file is written."""
    try:
        task = load_task(config)
        model = task.new_model()
    except (DataError, ModelError) as exc:
        raise ConfigError(str(exc)) from None
    if config.defenses:
        build_defenses(config, input_shape=task.dataset.input_shape, num_classes=task.dataset.num_classes, model=model)
    if config.engine.name == "ray" and config.engine.num_gpus_per_client > 0 and not torch.cuda.is_available():
        raise ConfigError("engine.num_gpus_per_client: no GPU is visible; set it to 0")
    if config.adversary.active:
        validate_adversary(config)


def validate_adversary(config: RunConfig) -> None:
    """The role loads, its options fit, the attack preset and overrides resolve."""
    if not config.tap.enabled:
        raise ConfigError("adversary.role: an adversary needs the tap; set tap.enabled = true")
    tap, rounds = config.tap, config.federation.rounds
    if config.adversary.options.get("decode") and not tap.keeps_everything and tap.spool_rounds < rounds:
        raise ConfigError(f"tap.spool_rounds: a decoding role gathers a client's updates over many rounds, which a tap "
                          f"policy drops after {tap.spool_rounds}; set it to federation.rounds ({rounds}) or keep every upload")
    try:
        if ":" in config.adversary.role:  # a plug-in: loaded only in a role process of its own
            check_plugin(config.adversary.role, dict(config.adversary.options), role_context(config))
        else:
            check_role(config.adversary.role, dict(config.adversary.options), role_context(config))
        preset_config(config.adversary.preset, dict(config.adversary.attack))
    except (RoleError, AttackConfigError) as exc:
        raise ConfigError(str(exc).replace("\n", " ")) from None
    if config.adversary.device != "auto" and not config.engine.ray_address:  # this machine's GPUs are the workers'
        try:
            resolve_device(config.adversary.device, "adversary.device")
        except DeviceError as exc:
            raise ConfigError(str(exc)) from None
    if config.adversary.role == "malicious-server":
        try:
            strategy_from_config(config)
        except MaliciousServerError as exc:
            raise ConfigError(str(exc)) from None


def write_deployment_card(config: RunConfig, task: Task, run_dir: Path) -> None:
    """What is public about this deployment, for the attacker (``deployment.json``)."""
    encoding = public_encoding(config, task.new_model(), task.dataset.input_shape[0])
    simulation_card(config, task, **encoding.card_fields()).write(run_dir)


def write_partitions(config: RunConfig, task: Task, run_dir: Path) -> None:
    """Per-partition sizes and label histograms (simulation bookkeeping, not traffic)."""
    hist = label_histogram(task.dataset.train_y.numpy(), list(task.partitions), task.dataset.num_classes)
    write_json_atomic(
        run_dir / PARTITIONS_JSON,
        {
            "scheme": config.data.partition,
            "alpha": config.data.alpha if config.data.partition == "dirichlet" else None,
            "sizes": [int(len(p)) for p in task.partitions],
            "label_histogram": hist.astype(int).tolist(),
        },
    )


def run_simulation(config: RunConfig, *, command: list[str] | None = None, quiet: bool = False) -> RunOutcome:
    validate(config)
    run_dir = create_run_dir(config, command=command)
    task = load_task(config)
    write_deployment_card(config, task, run_dir)
    write_partitions(config, task, run_dir)
    box: list[TrainingResult] = []
    server_app = server_app_for(config, run_dir, on_result=box.append, quiet=quiet)
    truth = ground_truth_sink(config, run_dir)
    client_app = make_client_app(config, truth)
    start = time.perf_counter()
    with ground_truth_held_open(run_dir) if truth is not None else contextlib.nullcontext():
        run_engine(server_app, client_app, config, truth)
    wall = time.perf_counter() - start
    if not box:
        raise RuntimeError("the server finished without a result; see the log above")
    result = box[0]
    last = result.rounds[-1]
    write_json_atomic(
        run_dir / SUMMARY_JSON,
        {
            "rounds": len(result.rounds),
            "final_accuracy": last.eval_acc,
            "final_test_loss": last.eval_loss,
            "wall_s": wall,
            "engine": config.engine.name,
            "per_round": [r.as_dict() for r in result.rounds],
            **_vetting_summary(config, run_dir),
            **({"role_process": note} if (note := role_process_note(run_dir)) else {}),
            **({"role_faults": faults} if (faults := role_faults(run_dir)) else {}),
        },
    )
    return RunOutcome(run_dir, result, wall)


def _vetting_summary(config: RunConfig, run_dir: Path) -> dict:
    """With a vetting defense under the tap: how many manipulated (and honest) rounds it flagged."""
    if not config.tap.enabled or not any(d.name == "vetting" for d in config.defenses):
        return {}
    report = vetting_detection(run_dir)
    return {"vetting": report} if report is not None else {}
