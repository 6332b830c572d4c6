"""The Ray engine: Flower's simulation runtime, kept on loopback."""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Iterator

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fl_sim.config import EngineConfig
from fl_sim.engine.node_ids import draw_id
from fl_sim.netguard import init_ray_local, ray_environment


@contextlib.contextmanager
def seeded_node_ids(seed: int) -> Iterator[None]:
    """Draw Flower's node ids from the run seed instead of os.urandom.

    The server samples clients by node id; with random ids the same seed would
    pick different partitions on every Ray run. This patches one module-level
    name in Flower's in-memory link state (a private API, so a missing name
    just leaves Flower's own ids in place).
    """
    from flwr.server.superlink.linkstate import in_memory_linkstate as linkstate

    original = getattr(linkstate, "generate_rand_int_from_bytes", None)
    if original is None:
        yield
        return
    rng = random.Random(seed)

    def seeded(num_bytes: int, exclude: set[int] | None = None) -> int:
        return draw_id(rng, num_bytes, exclude)

    linkstate.generate_rand_int_from_bytes = seeded
    try:
        yield
    finally:
        linkstate.generate_rand_int_from_bytes = original


def run_ray(server_app: ServerApp, client_app: ClientApp, num_nodes: int, engine: EngineConfig, seed: int) -> None:
    from flwr.simulation import run_simulation

    # Client processes share this machine: one torch thread each avoids oversubscription.
    os.environ.setdefault("FL_SIM_WORKER_THREADS", "1")
    init_ray_local(num_cpus=engine.ray_num_cpus or os.cpu_count(), address=engine.ray_address)
    logging.getLogger("flwr").setLevel(logging.ERROR)
    backend_config = {
        "client_resources": {"num_cpus": engine.num_cpus_per_client, "num_gpus": engine.num_gpus_per_client},
        "init_args": {"_node_ip_address": "127.0.0.1", "include_dashboard": False},
    }
    with ray_environment(), seeded_node_ids(seed):
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=num_nodes,
            backend_config=backend_config,
        )
