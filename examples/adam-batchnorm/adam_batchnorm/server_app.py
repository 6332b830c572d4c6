"""adam-batchnorm: A Flower / PyTorch app (server_fn + strategy)."""

from flwr.common import Context, ndarrays_to_parameters
from flwr.server import ServerApp, ServerAppComponents, ServerConfig
from flwr.server.strategy import FedAvg

from adam_batchnorm.task import Net, get_weights


def server_fn(context: Context):
    cfg = context.run_config
    strategy = FedAvg(
        fraction_fit=cfg["fraction-fit"],
        fraction_evaluate=1.0,
        min_available_clients=2,
        initial_parameters=ndarrays_to_parameters(get_weights(Net())),
        on_fit_config_fn=lambda server_round: {"lr": cfg["lr"]},
    )
    return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=cfg["num-server-rounds"]))


app = ServerApp(server_fn=server_fn)
