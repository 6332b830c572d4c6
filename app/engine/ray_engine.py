"""The Ray engine: Flower's simulation runtime, kept on loopback."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
from collections.abc import Iterator

import flwr
import ray
from flwr.clientapp import ClientApp
from flwr.common.constant import NODE_ID_NUM_BYTES, SUPERLINK_NODE_ID
from flwr.server.superlink.linkstate import in_memory_linkstate as linkstate
from flwr.serverapp import ServerApp
from flwr.simulation import run_simulation

from app.engine.truth_desk import DriverSink, serving
from app.netguard import LOOPBACK, apply_offline_env, ray_environment
from fl_sim.config import EngineConfig
from fl_sim.devices import WORKER_THREADS_ENV
from fl_sim.ground_truth import GroundTruthSink
from fl_sim.node_ids import draw_id, node_ids_for
from fl_sim.reaper import Reaper

FLOWER_ID_FUNCTION = "generate_rand_int_from_bytes"


def init_ray_local(num_cpus: int | None = None, num_gpus: int | None = None, address: str | None = None) -> None:
    """Start (or join) Ray bound to loopback, with dashboard and usage stats off."""
    apply_offline_env()
    if ray.is_initialized():
        return
    # Workers must import what the driver can (a user's app directory, say), as Flower
    # arranges when it starts Ray itself.
    # So must their torch threads be set on a cluster's other nodes, whose processes do not inherit the driver's environment.
    env_vars = {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    if os.environ.get(WORKER_THREADS_ENV):
        env_vars[WORKER_THREADS_ENV] = os.environ[WORKER_THREADS_ENV]
    runtime_env = {"env_vars": env_vars}
    with ray_environment():
        if address:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False, runtime_env=runtime_env)
            return
        ray.init(
            runtime_env=runtime_env,
            _node_ip_address=LOOPBACK,
            include_dashboard=False,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            logging_level="ERROR",
            log_to_driver=False,
            configure_logging=True,
        )


@contextlib.contextmanager
def seeded_node_ids(seed: int, num_nodes: int) -> Iterator[None]:
    """Give Flower's simulated nodes the seeded ids of :func:`fl_sim.node_ids.node_ids_for`.

    The server samples clients by node id; with Flower's random ids the same seed would
    pick different partitions on every Ray run. Flower draws node ids through one
    module-level function of its in-memory link state (a private API): node creations
    (the draws that exclude the SuperLink's own id) get the seeded ids, partition 0
    first; its other draws (run and task ids) come from a seeded stream of their own.
    If the function is missing, runs could not be reproduced: that is an error, not a
    silent fallback. (The server checks the ids it sees, too.)
    """
    original = getattr(linkstate, FLOWER_ID_FUNCTION, None)
    if original is None:
        raise RuntimeError(f"flwr {getattr(flwr, '__version__', '?')}: {linkstate.__name__}.{FLOWER_ID_FUNCTION} is missing, "
                           "so fl-sim cannot seed the simulated node ids; use the Flower version fl-sim pins")
    node_ids = iter(node_ids_for(seed, num_nodes))
    others = random.Random(f"flower-ids-{seed}")

    def seeded(num_bytes: int, exclude: set[int] | None = None) -> int:
        if num_bytes == NODE_ID_NUM_BYTES and exclude and SUPERLINK_NODE_ID in exclude:
            node = next(node_ids, None)
            if node is not None:
                return node
        return draw_id(others, num_bytes, exclude)

    setattr(linkstate, FLOWER_ID_FUNCTION, seeded)
    try:
        yield
    finally:
        setattr(linkstate, FLOWER_ID_FUNCTION, original)


def run_ray(server_app: ServerApp, client_app: ClientApp, num_nodes: int, engine: EngineConfig, seed: int,
            truth: GroundTruthSink | None = None) -> None:
    """``truth``: the clients' sink; a :class:`DriverSink`'s desk runs on this node while the simulation does."""
    apply_offline_env()
    # Client processes share this machine: one torch thread each avoids oversubscription.
    os.environ.setdefault(WORKER_THREADS_ENV, "1")
    # A Ray this run starts ends with it, even if the run is SIGKILLed; a cluster it joins is left alone.
    reaper = Reaper() if not engine.ray_address and not ray.is_initialized() else None
    try:
        init_ray_local(num_cpus=engine.ray_num_cpus or os.cpu_count(), address=engine.ray_address)
        with serving(truth) if isinstance(truth, DriverSink) else contextlib.nullcontext():
            _simulate(server_app, client_app, num_nodes, engine, seed)
    finally:
        if reaper is not None:
            reaper.stop()


def _simulate(server_app: ServerApp, client_app: ClientApp, num_nodes: int, engine: EngineConfig, seed: int) -> None:
    logging.getLogger("flwr").setLevel(logging.ERROR)
    backend_config = {
        "client_resources": {"num_cpus": engine.num_cpus_per_client, "num_gpus": engine.num_gpus_per_client},
        "init_args": {"_node_ip_address": "127.0.0.1", "include_dashboard": False},
    }
    with ray_environment(), seeded_node_ids(seed, num_nodes):
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=num_nodes,
            backend_config=backend_config,
        )
