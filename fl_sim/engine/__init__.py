"""Simulation engines by name: ``ray`` (Flower's runtime) and ``inline`` (in-process)."""

from __future__ import annotations

from collections.abc import Callable

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fl_sim.config import RunConfig

EngineFn = Callable[[ServerApp, ClientApp, RunConfig], None]


def _inline(server_app: ServerApp, client_app: ClientApp, config: RunConfig) -> None:
    from fl_sim.engine.inline import run_inline

    run_inline(server_app, client_app, config.federation.num_clients, config.seed)


def _ray(server_app: ServerApp, client_app: ClientApp, config: RunConfig) -> None:
    from fl_sim.engine.ray_engine import run_ray

    run_ray(server_app, client_app, config.federation.num_clients, config.engine, config.seed)


ENGINES: dict[str, EngineFn] = {"inline": _inline, "ray": _ray}


def run_engine(server_app: ServerApp, client_app: ClientApp, config: RunConfig) -> None:
    ENGINES[config.engine.name](server_app, client_app, config)
