"""Run a user's Flower app under the tap and leave an ordinary run directory behind."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from adversary.observation import ObservationError
from adversary.roles import RoleContext
from adversary.statement import AuditStatement
from adversary.traffic_log import TrafficLog
from app.audit.app_log import APP_LOG, seed_everything
from app.audit.app_ref import AuditError, FlowerAppSpec, import_component
from app.audit.run_config import merge_run_config
from app.audit.wrappers import Around, ConfiguredClientApp, tapped_server_app
from app.engine import run_apps
from app.wiring import tapped_session
from fl_sim.config import AdversaryConfig, TapConfig
from fl_sim.deployment import DeploymentCardError
from fl_sim.node_ids import node_ids_for
from fl_sim.rundir import SIMULATION_JSON, make_run_dir, write_json_atomic

APP_WORKDIR = "app_workdir"
ENGINES = ("ray", "inline")


@dataclass
class AuditOutcome:
    run_dir: Path
    messages: int
    wall_s: float


@contextlib.contextmanager
def _working_directory(path: Path):  # noqa: ANN202
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def execute_app(
    user_server: ServerApp,
    user_client: ClientApp,
    run_config: dict[str, Any],
    *,
    nodes: int,
    engine: str,
    seed: int,
    workdir: Path,
    around: Around | None = None,
) -> None:
    """Run the user's apps as they are, in ``workdir``; ``around`` opens a session around the app's
    main that hands it the Grid to use (a tapped one) and closes while the runtime is still up. The
    app's output goes to ``app.log`` next to ``workdir``; its randomness is seeded from ``seed``."""
    log = workdir.parent / APP_LOG
    server_app = tapped_server_app(user_server, run_config, around, log=log)
    client_app = ConfiguredClientApp(user_client, run_config, seed=seed, log=log)
    seed_everything(seed)
    with _working_directory(workdir):
        run_apps(server_app, client_app, engine=engine, nodes=nodes, seed=seed)


def run_audit(
    spec: FlowerAppSpec,
    *,
    overrides: dict[str, Any] | None = None,
    num_supernodes: int | None = None,
    engine: str = "ray",
    seed: int = 0,
    out_dir: str | Path = "runs",
    name: str = "audit",
    command: list[str] | None = None,
    statement: AuditStatement | None = None,
    adversary: AdversaryConfig | None = None,
    tap: TapConfig | None = None,
) -> AuditOutcome:
    """Everything is validated before the run directory is made; a run that
    captures nothing is removed again and reported as an error. ``tap``: what to keep of the app's
    tensors (None: everything), as a run's ``tap.keep_*`` keys say."""
    if engine not in ENGINES:
        raise AuditError(f"--engine: must be one of {', '.join(ENGINES)}, got {engine!r}")
    if num_supernodes is not None and num_supernodes < 1:
        raise AuditError(f"--num-supernodes: must be >= 1, got {num_supernodes}")
    nodes = num_supernodes or spec.num_supernodes or 2
    run_config = merge_run_config(spec.defaults, overrides or {})
    user_server = import_component(spec.serverapp, "serverapp", ServerApp, spec.root)
    user_client = import_component(spec.clientapp, "clientapp", ClientApp, spec.root)
    statement = statement or AuditStatement(root=str(spec.root) if spec.root else None)
    try:
        card = statement.card()
        statement.check(card)  # the model builds and takes the stated input shape, before the app runs
    except (DeploymentCardError, ObservationError) as exc:
        raise AuditError(str(exc)) from None

    resolved = {
        "kind": "audit",
        "app": spec.describe(),
        "run_config": run_config,
        "num_supernodes": nodes,
        "engine": engine,
        "seed": seed,
        "tap": "curious-server (the Grid the app's ServerApp uses)",
        "tap_policy": tap.model_dump() if tap is not None else "keep everything",
        "statement": {k: v for k, v in dataclasses.asdict(statement).items() if v not in (None, {}, ())},
        "adversary": adversary.model_dump() if adversary is not None else None,
    }
    run_dir = make_run_dir(out_dir, name, resolved, seed=seed, command=command).resolve()
    workdir = run_dir / APP_WORKDIR
    workdir.mkdir()
    card.write(run_dir)
    node_ids = node_ids_for(seed, nodes)  # both engines draw node ids from the seed
    write_json_atomic(run_dir / SIMULATION_JSON, {"partition_of_node": {str(n): p for p, n in enumerate(node_ids)},
                                                  "num_partitions": nodes})
    context = RoleContext.for_simulation(False, dict(adversary.options) if adversary is not None else {}, node_ids)

    @contextlib.contextmanager
    def around(grid: Grid) -> Iterator[Grid]:
        with tapped_session(grid, run_dir, adversary, context, engine, tap=tap, seed=seed) as session:
            yield session.grid

    start = time.perf_counter()
    execute_app(user_server, user_client, run_config, nodes=nodes, engine=engine, seed=seed, workdir=workdir, around=around)
    wall = time.perf_counter() - start
    with TrafficLog.open(run_dir) as log:
        count = len(log)
    if count == 0:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise AuditError("no messages captured: the app's ServerApp sent nothing through its Grid")
    return AuditOutcome(run_dir, count, wall)
