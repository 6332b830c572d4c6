"""adam-batchnorm: model, data and training.

A small ConvNet with BatchNorm, trained with Adam for a number of local epochs, inputs normalised
to [-1, 1] in the data pipeline (``Normalize((0.5,), (0.5,))``, as many Flower examples do). The
data are the 5,000 real MNIST digits that ship with this machine's packages; each client's
partition is shuffled once when the data are split.
"""

from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from torchvision.transforms import Normalize

from fl_sim.data import load_dataset

normalize = Normalize((0.5,), (0.5,))


class Net(nn.Module):
    """Conv-BatchNorm-ReLU blocks with max-pooling, then a linear classifier (1x28x28 digits)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(32 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = self.pool(F.relu(self.bn2(self.conv2(x))))
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)))


def get_weights(net):
    return [val.cpu().numpy() for _, val in net.state_dict().items()]


def set_weights(net, parameters):
    state_dict = OrderedDict({k: torch.tensor(v) for k, v in zip(net.state_dict().keys(), parameters)})
    net.load_state_dict(state_dict, strict=True)


def client_data(partition_id: int, num_partitions: int, images: int = 0):
    """A client's training images (in [0, 1], before normalisation) and labels, in the order it trains on them."""
    data = load_dataset("mnist-5k")
    order = np.random.default_rng(7).permutation(len(data.train_y))
    part = np.array_split(order, num_partitions)[partition_id]
    if images:
        part = part[:images]
    return data.train_x[part], data.train_y[part]


def load_data(partition_id: int, num_partitions: int, batch_size: int, images: int = 0):
    x, y = client_data(partition_id, num_partitions, images)
    data = load_dataset("mnist-5k")
    train = TensorDataset(normalize(x), y)
    test = TensorDataset(normalize(data.test_x[:500]), data.test_y[:500])
    return DataLoader(train, batch_size=batch_size), DataLoader(test, batch_size=256)


def train(net, trainloader, epochs, lr):
    net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    running_loss, steps = 0.0, 0
    for _ in range(epochs):
        for images, labels in trainloader:
            optimizer.zero_grad()
            loss = F.cross_entropy(net(images), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
            steps += 1
    return running_loss / max(steps, 1)


def test(net, testloader):
    net.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for images, labels in testloader:
            outputs = net(images)
            loss += F.cross_entropy(outputs, labels, reduction="sum").item()
            correct += (outputs.argmax(1) == labels).sum().item()
    n = len(testloader.dataset)
    return loss / n, correct / n
