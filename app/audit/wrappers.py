"""Wrap a user's ServerApp and ClientApp without touching their code.

Server side: a ServerApp whose main hands the user's app a tapped Grid (the
curious-server view: every message) and the merged run config. Client side: a
ClientApp that calls the user's app with a fresh Context carrying the merged run
config (Flower makes the client's run_config read-only) and the same state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from app.audit.app_log import call_seed, captured, seed_everything

Around = Callable[[Grid], AbstractContextManager[Grid]]


@contextlib.contextmanager
def _untapped(grid: Grid) -> Iterator[Grid]:
    yield grid


def tapped_server_app(user_app: ServerApp, run_config: dict[str, Any], around: Around | None = None,
                      log: Path | None = None) -> ServerApp:
    """``around(grid)`` opens a session (the tap, the adversary) whose Grid the user's app gets; it
    closes after the app's main, while the runtime is still up. ``log``: where the app's output goes."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        context.run_config.clear()
        context.run_config.update(run_config)
        with (around or _untapped)(grid) as session_grid, (captured(log, "server") if log else contextlib.nullcontext()):
            user_app(session_grid, context)

    return app


class ConfiguredClientApp(ClientApp):
    """Delegates every message to the user's ClientApp (both API styles), seeded per call and with its
    output in ``log`` (see :mod:`app.audit.app_log`)."""

    def __init__(self, inner: ClientApp, run_config: dict[str, Any], seed: int = 0, log: Path | None = None) -> None:
        super().__init__()
        self._inner = inner
        self._run_config = dict(run_config)
        self._seed, self._log = seed, log

    def __call__(self, message: Message, context: Context) -> Message:
        configured = Context(
            run_id=context.run_id,
            node_id=context.node_id,
            node_config=context.node_config,
            state=context.state,
            run_config=dict(self._run_config),
        )
        seed_everything(call_seed(self._seed, context.node_id, f"{message.metadata.group_id}:{message.metadata.message_type}"))
        if self._log is None:
            return self._inner(message, configured)
        with captured(self._log, f"client {context.node_id}"):
            return self._inner(message, configured)
