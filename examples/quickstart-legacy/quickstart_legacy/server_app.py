"""quickstart-legacy: A Flower / PyTorch app (server_fn + strategy)."""

import numpy as np
import torch
from flwr.common import Context, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import ServerApp, ServerAppComponents, ServerConfig
from flwr.server.strategy import FedAvg

from quickstart_legacy.task import Net, get_weights


class SaveModelStrategy(FedAvg):
    """FedAvg that keeps the final global weights on disk (Flower's "save model" recipe)."""

    def __init__(self, num_rounds, **kwargs):
        super().__init__(**kwargs)
        self.num_rounds = num_rounds

    def aggregate_fit(self, server_round, results, failures):
        parameters, metrics = super().aggregate_fit(server_round, results, failures)
        if parameters is not None and server_round == self.num_rounds:
            np.savez("final_model.npz", *parameters_to_ndarrays(parameters))
        return parameters, metrics


def server_fn(context: Context):
    num_rounds = context.run_config["num-server-rounds"]
    lr = context.run_config["lr"]
    torch.manual_seed(0)
    parameters = ndarrays_to_parameters(get_weights(Net()))
    strategy = SaveModelStrategy(
        num_rounds,
        fraction_fit=context.run_config["fraction-fit"],
        fraction_evaluate=1.0,
        min_fit_clients=2,
        min_evaluate_clients=2,
        min_available_clients=2,
        initial_parameters=parameters,
        on_fit_config_fn=lambda server_round: {"lr": lr},
    )
    return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=num_rounds))


app = ServerApp(server_fn=server_fn)
