"""The Ray engine: Flower's simulation runtime, kept on loopback."""

from __future__ import annotations

import logging
import os

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fl_sim.config import EngineConfig
from fl_sim.netguard import init_ray_local, ray_environment


def run_ray(server_app: ServerApp, client_app: ClientApp, num_nodes: int, engine: EngineConfig) -> None:
    from flwr.simulation import run_simulation

    # Client processes share this machine: one torch thread each avoids oversubscription.
    os.environ.setdefault("FL_SIM_WORKER_THREADS", "1")
    init_ray_local(num_cpus=engine.ray_num_cpus or os.cpu_count(), address=engine.ray_address)
    logging.getLogger("flwr").setLevel(logging.ERROR)
    backend_config = {
        "client_resources": {"num_cpus": engine.num_cpus_per_client, "num_gpus": engine.num_gpus_per_client},
        "init_args": {"_node_ip_address": "127.0.0.1", "include_dashboard": False},
    }
    with ray_environment():
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=num_nodes,
            backend_config=backend_config,
        )
