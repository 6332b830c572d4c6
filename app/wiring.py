"""How a run is put together: the tap and the adversary around the server's rounds.

One session (:func:`tapped_session`) serves fl-sim's own simulations and audits of
unmodified Flower apps: a traffic writer, the adversary's role and workers (when a
role is configured), and a tapped Grid that feeds them; at the end, while the
runtime is still up, the adversary's attacks are waited for and the log is closed.
A simulation's server also gets its strategy wrapped when the role is a malicious
server (:func:`server_app_for`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.serverapp import Grid, ServerApp
from rich.console import Console

from adversary.feed import Describe, JobFeed, client_namer, plain_client
from adversary.jobs import messages_named_by_jobs
from adversary.malicious.wrapper import malicious_server
from adversary.progress import PROGRESS_LOG
from adversary.roles import RoleContext
from adversary.service import role_faults, start_adversary
from adversary.tap import TappedGrid
from adversary.tap_policy import TapPolicy
from adversary.traffic_writer import TrafficWriter
from fl_sim.config import AdversaryConfig, RunConfig, TapConfig
from fl_sim.node_ids import node_ids_for
from server.app import StrategyWrapper, make_server_app
from server.rounds import TrainingResult


def role_context(config: RunConfig) -> RoleContext:
    nodes = node_ids_for(config.seed, config.federation.num_clients)
    return RoleContext.for_simulation(config.federation.secagg, dict(config.adversary.options), nodes)


def partition_of_node(config: RunConfig) -> dict[int, int]:
    return {node: p for p, node in enumerate(node_ids_for(config.seed, config.federation.num_clients))}


def defense_labels(config: RunConfig) -> Callable[[int], list[str]]:
    """A partition's defenses, as labels ('gradprune p=0.99')."""
    return lambda partition: [d.label() for d in config.defenses if d.applies_to(partition)]


def describe_clients(config: RunConfig) -> Describe:
    """Names a simulated client by node id, partition and the defenses it applies (for people, not attacks)."""
    return client_namer(partition_of_node(config), defense_labels(config))


@dataclass
class Session:
    grid: Grid
    adversary: Any | None  # adversary.service's ThreadAdversary or RayAdversary
    writer: TrafficWriter


@contextlib.contextmanager
def tapped_session(grid: Grid, run_dir: Path, adversary: AdversaryConfig | None, context: RoleContext, engine: str,
                   console: Console | None = None, describe: Describe = plain_client,
                   tap: TapConfig | None = None, seed: int = 0) -> Iterator[Session]:
    """The tap (and the adversary, if a role is configured) around everything the server sends and receives.

    With a ``console``, each attack prints one line when it ends (``describe`` names its client). With a
    ``tap`` that does not keep everything, its policy decides whose tensors stay on disk; what attack
    jobs name is kept whatever it says."""
    policy = None if tap is None or tap.keeps_everything else TapPolicy.from_config(tap, seed)
    attacker = feed = None
    finished = False

    def pinned() -> set[int]:
        """What attack jobs name, once the role has seen every message so far (it may be a round behind)."""
        if attacker is not None and not finished:
            attacker.catch_up()
        return messages_named_by_jobs(run_dir)

    writer = TrafficWriter(run_dir, keep=policy.keeps if policy else None, pinned=pinned,
                           spool_rounds=tap.spool_rounds if tap else 1)
    try:
        if adversary is not None and adversary.active:
            # Started here, inside the server's main: under Ray the runtime is up by now.
            attacker = start_adversary(run_dir, adversary, context, engine)
            if console is not None:
                feed = JobFeed(run_dir, lambda line: console.print(line, highlight=False, soft_wrap=True), describe).start()
        yield Session(TappedGrid(grid, writer, observe=attacker.on_intercept if attacker is not None else None), attacker,
                      writer)
    finally:
        try:
            writer.flush()  # every message committed and shown to the role before it is drained
        finally:
            if attacker is not None:
                wait = adversary.wait if adversary is not None else True
                attacker.drain()  # the role has seen every message: its attacks are all in the book
                if feed is not None:
                    feed.poll()
                if feed is not None and wait and (left := feed.unfinished()):
                    console.print(f"training done; waiting for {left} unfinished attack{'s' if left > 1 else ''} "
                                  f"(progress: {run_dir / PROGRESS_LOG})", highlight=False, soft_wrap=True)
                    feed.show_progress(run_dir / PROGRESS_LOG)
                states = attacker.finish(wait)
                finished = True
                if feed is not None:
                    feed.stop()
                if console is not None:
                    counts = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
                    console.print(f"adversary: {counts} attacks" if counts else "adversary: no attacks scheduled",
                                  highlight=False, soft_wrap=True)
                    for line in role_faults(run_dir):
                        console.print(f"adversary: {line}", highlight=False, soft_wrap=True)
            writer.close()  # re-raises a failed write, once the adversary is done


def _wrapper(config: RunConfig, run_dir: Path, session: Session) -> StrategyWrapper:
    """A malicious server wraps the honest strategy; any other role leaves it as it is."""
    if config.adversary.role != "malicious-server":
        return lambda strategy: strategy
    adversary = session.adversary
    # in the writer's thread, after the round's messages: the role sees them before the aggregate, as before
    on_aggregate = (None if adversary is None else
                    lambda aggregate: session.writer.call_after(lambda: adversary.on_server_aggregate(aggregate)))
    return lambda strategy: malicious_server(config, strategy, run_dir, on_aggregate)


def server_app_for(config: RunConfig, run_dir: Path | None, *, on_result: Callable[[TrainingResult], None] | None = None,
                   quiet: bool = False) -> ServerApp:
    """The run's ServerApp: with the tap on, the rounds run inside a tapped session."""
    if not config.tap.enabled or run_dir is None:
        return make_server_app(config, run_dir, on_result=on_result, quiet=quiet)
    path = Path(run_dir)

    @contextlib.contextmanager
    def around(grid: Grid) -> Iterator[tuple[Grid, StrategyWrapper]]:
        console = Console(stderr=True, quiet=quiet)
        with tapped_session(grid, path, config.adversary, role_context(config), config.engine.name, console,
                            describe_clients(config), config.tap, config.seed) as session:
            yield session.grid, _wrapper(config, path, session)

    return make_server_app(config, run_dir, around=around, on_result=on_result, quiet=quiet)

