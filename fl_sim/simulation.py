"""One federated run end to end: validate, make the run directory, simulate, summarise."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from fl_sim.config import ConfigError, RunConfig
from fl_sim.data import DataError, label_histogram
from fl_sim.models import ModelError
from fl_sim.rundir import PARTITIONS_JSON, SUMMARY_JSON, create_run_dir, write_json_atomic
from fl_sim.task import load_task
from server.loop import TrainingResult


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
        from clients.defenses import build_defenses  # the clients' side; raises ConfigError

        build_defenses(config, input_shape=task.dataset.input_shape, num_classes=task.dataset.num_classes, model=model)
    if config.engine.name == "ray" and config.engine.num_gpus_per_client > 0:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("engine.num_gpus_per_client: no GPU is visible; set it to 0")
    if config.adversary.active:
        validate_adversary(config)


def validate_adversary(config: RunConfig) -> None:
    """The role loads, its options fit, the attack preset and overrides resolve."""
    from adversary.attacks import ConfigError as AttackConfigError
    from adversary.attacks import preset_config
    from adversary.grants import THREAT_KEYS
    from adversary.roles import RoleError, build_role
    from adversary.service import role_context
    from fl_sim.engine.node_ids import node_ids_for

    if not config.tap.enabled:
        raise ConfigError("adversary.role: an adversary needs the tap; set tap.enabled = true")
    nodes = node_ids_for(config.seed, config.federation.num_clients)
    try:
        build_role(config.adversary.role, dict(config.adversary.options), role_context(config.federation.secagg, dict(enumerate(nodes))))
        preset_config(config.adversary.preset, dict(config.adversary.attack))
    except (RoleError, AttackConfigError) as exc:
        raise ConfigError(str(exc).replace("\n", " ")) from None
    if config.adversary.role == "malicious-server":
        from adversary.malicious.from_config import strategy_from_config
        from adversary.malicious.threat import MaliciousServerError

        try:
            strategy_from_config(config)
        except MaliciousServerError as exc:
            raise ConfigError(str(exc)) from None
    for key in config.adversary.threat:
        if key not in THREAT_KEYS:
            raise ConfigError(f"adversary.threat.{key}: unknown key; choose one of: {', '.join(THREAT_KEYS)}")


def write_partitions(config: RunConfig, run_dir: Path) -> None:
    """Per-partition sizes and label histograms (simulation bookkeeping, not traffic)."""
    task = load_task(config)
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
    from clients.app import make_client_app
    from fl_sim.engine import run_engine
    from server.app import make_server_app

    validate(config)
    run_dir = create_run_dir(config, command=command)
    write_partitions(config, run_dir)
    if config.tap.ground_truth:
        from adversary.ground_truth import init_ground_truth

        init_ground_truth(run_dir)
    box: list[TrainingResult] = []
    server_app = make_server_app(config, run_dir, on_result=box.append, quiet=quiet)
    client_app = make_client_app(config, run_dir)
    start = time.perf_counter()
    run_engine(server_app, client_app, config)
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
        },
    )
    return RunOutcome(run_dir, result, wall)


def _vetting_summary(config: RunConfig, run_dir: Path) -> dict:
    """With a vetting defense under the tap: how many manipulated (and honest) rounds it flagged."""
    if not config.tap.enabled or not any(d.name == "vetting" for d in config.defenses):
        return {}
    from adversary.malicious.detection import vetting_detection

    report = vetting_detection(run_dir)
    return {"vetting": report} if report is not None else {}


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / SUMMARY_JSON).read_text())
