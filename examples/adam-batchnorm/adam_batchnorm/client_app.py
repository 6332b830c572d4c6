"""adam-batchnorm: A Flower / PyTorch app (client_fn + NumPyClient)."""

from flwr.client import ClientApp, NumPyClient
from flwr.common import Context

from adam_batchnorm.task import Net, get_weights, load_data, set_weights, test, train


class FlowerClient(NumPyClient):
    def __init__(self, net, trainloader, valloader, local_epochs):
        self.net = net
        self.trainloader = trainloader
        self.valloader = valloader
        self.local_epochs = local_epochs

    def fit(self, parameters, config):
        set_weights(self.net, parameters)
        train_loss = train(self.net, self.trainloader, self.local_epochs, config["lr"])
        return get_weights(self.net), len(self.trainloader.dataset), {"train_loss": train_loss}

    def evaluate(self, parameters, config):
        set_weights(self.net, parameters)
        loss, accuracy = test(self.net, self.valloader)
        return loss, len(self.valloader.dataset), {"accuracy": accuracy}


def client_fn(context: Context):
    cfg = context.run_config
    trainloader, valloader = load_data(context.node_config["partition-id"], context.node_config["num-partitions"],
                                       cfg["batch-size"], cfg["images-per-client"])
    return FlowerClient(Net(), trainloader, valloader, cfg["local-epochs"]).to_client()


app = ClientApp(client_fn=client_fn)
