"""quickstart-legacy: A Flower / PyTorch app (client_fn + NumPyClient)."""

from flwr.client import ClientApp, NumPyClient
from flwr.common import Context

from quickstart_legacy.task import Net, get_weights, load_data, set_weights, test, train


class FlowerClient(NumPyClient):
    def __init__(self, net, trainloader, valloader, local_epochs, max_steps):
        self.net = net
        self.trainloader = trainloader
        self.valloader = valloader
        self.local_epochs = local_epochs
        self.max_steps = max_steps

    def fit(self, parameters, config):
        set_weights(self.net, parameters)
        train_loss = train(self.net, self.trainloader, self.local_epochs, config["lr"], self.max_steps)
        return get_weights(self.net), len(self.trainloader.dataset), {"train_loss": train_loss}

    def evaluate(self, parameters, config):
        set_weights(self.net, parameters)
        loss, accuracy = test(self.net, self.valloader)
        return loss, len(self.valloader.dataset), {"accuracy": accuracy}


def client_fn(context: Context):
    partition_id = context.node_config["partition-id"]
    num_partitions = context.node_config["num-partitions"]
    trainloader, valloader = load_data(partition_id, num_partitions, context.run_config["batch-size"])
    return FlowerClient(Net(), trainloader, valloader, context.run_config["local-epochs"], context.run_config["max-steps"]).to_client()


app = ClientApp(client_fn=client_fn)
