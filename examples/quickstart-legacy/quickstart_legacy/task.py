"""quickstart-legacy: model, data and training, as in Flower's PyTorch quickstart.

Self-contained on purpose (an app as users have it). The data are 5,000 real
MNIST digits that ship with this machine's packages.
"""

from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from fl_sim.data import load_dataset


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 7 * 7, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


def load_data(partition_id, num_partitions, batch_size):
    data = load_dataset("mnist-5k")
    part = np.array_split(np.random.default_rng(7).permutation(len(data.train_y)), num_partitions)[partition_id]
    generator = torch.Generator().manual_seed(partition_id)
    trainloader = DataLoader(TensorDataset(data.train_x[part], data.train_y[part]), batch_size=batch_size, shuffle=True, generator=generator)
    return trainloader, DataLoader(TensorDataset(data.test_x[:500], data.test_y[:500]), batch_size=256)


def train(net, trainloader, epochs, lr, max_steps=None):
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    net.train()
    total, steps = 0.0, 0
    for _ in range(epochs):
        for images, labels in trainloader:
            optimizer.zero_grad()
            loss = F.cross_entropy(net(images), labels)
            loss.backward()
            optimizer.step()
            total, steps = total + loss.item(), steps + 1
            if max_steps and steps >= max_steps:
                return total / steps
    return total / max(steps, 1)


def test(net, testloader):
    net.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for images, labels in testloader:
            out = net(images)
            loss += F.cross_entropy(out, labels, reduction="sum").item()
            correct += (out.argmax(1) == labels).sum().item()
    n = len(testloader.dataset)
    return loss / n, correct / n


def get_weights(net):
    return [val.cpu().numpy() for _, val in net.state_dict().items()]


def set_weights(net, parameters):
    params_dict = zip(net.state_dict().keys(), parameters)
    net.load_state_dict(OrderedDict({k: torch.tensor(v) for k, v in params_dict}), strict=True)
