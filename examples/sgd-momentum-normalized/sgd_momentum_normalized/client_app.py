"""sgd-momentum-normalized: A Flower / PyTorch app (ClientApp, Message API)."""

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from sgd_momentum_normalized.task import Net, load_data
from sgd_momentum_normalized.task import test as test_fn
from sgd_momentum_normalized.task import train as train_fn

app = ClientApp()


@app.train()
def train(msg: Message, context: Context):
    """Train the model on local data."""
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    device = torch.device("cpu")
    cfg = context.run_config
    trainloader, _ = load_data(context.node_config["partition-id"], context.node_config["num-partitions"],
                               cfg["batch-size"], cfg["images-per-client"])
    train_loss = train_fn(model, trainloader, cfg["local-epochs"], msg.content["config"]["lr"], cfg["momentum"],
                          cfg["weight-decay"], device)
    metrics = {"train_loss": train_loss, "num-examples": len(trainloader.dataset)}
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context):
    """Evaluate the model on local data."""
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    cfg = context.run_config
    _, valloader = load_data(context.node_config["partition-id"], context.node_config["num-partitions"], cfg["batch-size"])
    eval_loss, eval_acc = test_fn(model, valloader, torch.device("cpu"))
    metrics = {"eval_loss": eval_loss, "eval_acc": eval_acc, "num-examples": len(valloader.dataset)}
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
