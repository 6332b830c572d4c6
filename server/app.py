"""The ServerApp: the round loop (or, with ``federation.secagg``, Flower's SecAgg+ workflow) on a Grid.

The server knows nothing of taps or adversaries. The layer that wires a run may
pass ``around``: given the Grid, it opens a session around the rounds that hands
back the Grid to use (a tapped one, say) and a wrapper for the strategy (a
malicious server's), and closes it after the last round while the runtime is
still up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from rich.console import Console

from fl_sim.config import RunConfig
from fl_sim.rounds import RoundStrategy
from server.loop import run_rounds
from server.rounds import TrainingResult
from server.secagg import run_secagg_rounds
from server.strategy import FedStrategy

StrategyWrapper = Callable[[RoundStrategy], RoundStrategy]
Around = Callable[[Grid], AbstractContextManager[tuple[Grid, StrategyWrapper]]]


@contextlib.contextmanager
def _plain(grid: Grid) -> Iterator[tuple[Grid, StrategyWrapper]]:
    yield grid, lambda strategy: strategy


def make_server_app(
    config: RunConfig,
    run_dir: str | Path | None,
    *,
    around: Around | None = None,
    on_result: Callable[[TrainingResult], None] | None = None,
    quiet: bool = False,
) -> ServerApp:
    run_path = Path(run_dir) if run_dir is not None else None
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        console = Console(stderr=True, quiet=quiet)
        with (around or _plain)(grid) as (session_grid, wrap):
            strategy = wrap(FedStrategy(config))
            if config.federation.secagg:
                result = run_secagg_rounds(config, session_grid, context, strategy, run_path, console)
            else:
                result = run_rounds(config, session_grid, strategy, run_path, console)
        if on_result is not None:
            on_result(result)

    return app
