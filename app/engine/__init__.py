"""Simulation engines by name: ``ray`` (Flower's runtime) and ``inline`` (in-process).

Each engine says where its clients hand their private batches (:class:`GroundTruthSink`): the
inline engine's clients write the sidecar in place; Ray's send them to a desk on the driver's node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from app.engine.inline import run_inline
from app.engine.ray_engine import run_ray
from app.engine.truth_desk import DriverSink
from app.netguard import apply_offline_env
from fl_sim.config import EngineConfig, RunConfig
from fl_sim.ground_truth import GroundTruthSink, SidecarWriter
from fl_sim.registry import Registry

EngineFn = Callable[[ServerApp, ClientApp, int, EngineConfig, int, "GroundTruthSink | None"], None]


@dataclass(frozen=True)
class Engine:
    run: EngineFn
    sink: Callable[[Path], GroundTruthSink]  # where its clients hand a run's private batches


ENGINES = Registry("engine")
ENGINES.add("inline", Engine(lambda server, client, nodes, engine, seed, truth: run_inline(server, client, nodes, seed),
                             SidecarWriter))
ENGINES.add("ray", Engine(run_ray, lambda run_dir: DriverSink(str(run_dir))))


def run_apps(server_app: ServerApp, client_app: ClientApp, *, engine: str, nodes: int, seed: int,
             engine_config: EngineConfig | None = None, truth: GroundTruthSink | None = None) -> None:
    """Run a ServerApp and a ClientApp with ``nodes`` simulated clients (node ids drawn from ``seed``);
    ``truth``: the sink the client app hands its private batches to (the engine serves it while it runs)."""
    apply_offline_env()
    ENGINES.lookup(engine).run(server_app, client_app, nodes, engine_config or EngineConfig(name=engine), seed, truth)


def ground_truth_sink(config: RunConfig, run_dir: Path) -> GroundTruthSink | None:
    """Where this run's clients hand their private batches (None: the run keeps no ground truth)."""
    return ENGINES.lookup(config.engine.name).sink(Path(run_dir).resolve()) if config.tap.ground_truth else None


def run_engine(server_app: ServerApp, client_app: ClientApp, config: RunConfig, truth: GroundTruthSink | None = None) -> None:
    run_apps(server_app, client_app, engine=config.engine.name, nodes=config.federation.num_clients, seed=config.seed,
             engine_config=config.engine, truth=truth)
