"""Wrap a user's ServerApp and ClientApp without touching their code.

Server side: a ServerApp whose main hands the user's app a tapped Grid (the
curious-server view: every message) and the merged run config. Client side: a
ClientApp that calls the user's app with a fresh Context carrying the merged run
config (Flower makes the client's run_config read-only) and the same state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp


def tapped_server_app(user_app: ServerApp, run_config: dict[str, Any], tap: Callable[[Grid], Grid],
                      before_exit: Callable[[], Any] | None = None) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        context.run_config.clear()
        context.run_config.update(run_config)
        try:
            user_app(tap(grid), context)
        finally:
            if before_exit is not None:  # e.g. wait for the adversary's attacks while Ray is up
                before_exit()

    return app


class ConfiguredClientApp(ClientApp):
    """Delegates every message to the user's ClientApp (both API styles)."""

    def __init__(self, inner: ClientApp, run_config: dict[str, Any]) -> None:
        super().__init__()
        self._inner = inner
        self._run_config = dict(run_config)

    def __call__(self, message: Message, context: Context) -> Message:
        configured = Context(
            run_id=context.run_id,
            node_id=context.node_id,
            node_config=context.node_config,
            state=context.state,
            run_config=dict(self._run_config),
        )
        return self._inner(message, configured)
