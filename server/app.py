"""The ServerApp: the round loop (or, with ``federation.secagg``, Flower's SecAgg+ workflow) behind a (possibly tapped) Grid."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from rich.console import Console

from adversary.tap import TappedGrid
from adversary.traffic_log import TrafficWriter
from fl_sim.config import RunConfig
from server.loop import FederatedLoop, TrainingResult


def _start_adversary(config: RunConfig, run_path: Path):  # noqa: ANN202
    from adversary.service import role_context, start_adversary
    from fl_sim.engine.node_ids import node_ids_for

    nodes = node_ids_for(config.seed, config.federation.num_clients)
    context = role_context(config.federation.secagg, dict(enumerate(nodes)))
    return start_adversary(run_path, config.adversary, context, config.engine.name)


def _manipulation(config: RunConfig, run_path: Path | None, adversary: Any):  # noqa: ANN202
    """A malicious server's strategy (what it sends; the aggregates it sees go to the adversary), if that is the role."""
    if config.adversary.role != "malicious-server":
        return None
    from adversary.malicious.from_config import manipulation_from_config

    return manipulation_from_config(config, run_path, adversary.on_server_aggregate if adversary is not None else None)


def make_server_app(
    config: RunConfig,
    run_dir: str | Path | None,
    on_result: Callable[[TrainingResult], None] | None = None,
    quiet: bool = False,
) -> ServerApp:
    run_path = Path(run_dir) if run_dir is not None else None
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        writer = None
        adversary = None
        if config.tap.enabled and run_path is not None:
            writer = TrafficWriter(run_path)
            if config.adversary.active:
                adversary = _start_adversary(config, run_path)
            grid = TappedGrid(grid, writer, observe=adversary.on_intercept if adversary is not None else None)
        try:
            manipulation = _manipulation(config, run_path, adversary)
            if config.federation.secagg:
                from server.secagg import run_secagg  # Flower's legacy SecAgg+ workflow

                result = run_secagg(config, run_path, grid, context, console=Console(stderr=True, quiet=quiet),
                                    manipulation=manipulation)
            else:
                result = FederatedLoop(config, run_path, console=Console(stderr=True, quiet=quiet),
                                       manipulation=manipulation).run(grid)
        finally:
            if adversary is not None:
                states = adversary.finish(config.adversary.wait)
                Console(stderr=True, quiet=quiet).print(
                    "adversary: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())) + " attacks")
            if writer is not None:
                writer.close()
        if on_result is not None:
            on_result(result)

    return app
