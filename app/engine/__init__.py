"""Simulation engines by name: ``ray`` (Flower's runtime) and ``inline`` (in-process)."""

from __future__ import annotations

from collections.abc import Callable

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from app.engine.inline import run_inline
from app.engine.ray_engine import run_ray
from app.netguard import apply_offline_env
from fl_sim.config import EngineConfig, RunConfig
from fl_sim.registry import Registry

EngineFn = Callable[[ServerApp, ClientApp, int, EngineConfig, int], None]
ENGINES = Registry("engine")
ENGINES.add("inline", lambda server, client, nodes, engine, seed: run_inline(server, client, nodes, seed))
ENGINES.add("ray", run_ray)


def run_apps(server_app: ServerApp, client_app: ClientApp, *, engine: str, nodes: int, seed: int,
             engine_config: EngineConfig | None = None) -> None:
    """Run a ServerApp and a ClientApp with ``nodes`` simulated clients (node ids drawn from ``seed``)."""
    apply_offline_env()
    ENGINES.lookup(engine)(server_app, client_app, nodes, engine_config or EngineConfig(name=engine), seed)


def run_engine(server_app: ServerApp, client_app: ClientApp, config: RunConfig) -> None:
    run_apps(server_app, client_app, engine=config.engine.name, nodes=config.federation.num_clients, seed=config.seed,
             engine_config=config.engine)
