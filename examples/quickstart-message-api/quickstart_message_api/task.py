"""quickstart-message-api: model, data and training, as in Flower's PyTorch quickstart.

The data are 5,000 real MNIST digits that ship with this machine's packages
(Flower's own quickstart downloads CIFAR-10 from a hub, which is unreachable here).
"""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from fl_sim.data import load_dataset


class Net(nn.Module):
    """Small CNN (adapted from 'PyTorch: A 60 Minute Blitz')."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 16 * 4 * 4)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def load_data(partition_id: int, num_partitions: int, batch_size: int):
    """IID partition of the embedded MNIST digits; a shared test split."""
    data = load_dataset("mnist-5k")
    order = np.random.default_rng(42).permutation(len(data.train_y))
    part = np.array_split(order, num_partitions)[partition_id]
    train = TensorDataset(data.train_x[part], data.train_y[part])
    test = TensorDataset(data.test_x[:500], data.test_y[:500])
    generator = torch.Generator().manual_seed(partition_id)
    return DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator), DataLoader(test, batch_size=256)


def train(net, trainloader, epochs, lr, device, max_steps=None):
    """Train the model on the training set."""
    net.to(device)
    criterion = torch.nn.CrossEntropyLoss().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    net.train()
    running_loss, steps = 0.0, 0
    for _ in range(epochs):
        for images, labels in trainloader:
            optimizer.zero_grad()
            loss = criterion(net(images.to(device)), labels.to(device))
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
            steps += 1
            if max_steps and steps >= max_steps:
                return running_loss / steps
    return running_loss / max(steps, 1)


def test(net, testloader, device):
    """Validate the model on the test set."""
    net.to(device)
    criterion = torch.nn.CrossEntropyLoss()
    correct, loss = 0, 0.0
    net.eval()
    with torch.no_grad():
        for images, labels in testloader:
            outputs = net(images.to(device))
            loss += criterion(outputs, labels.to(device)).item()
            correct += (torch.max(outputs.data, 1)[1] == labels.to(device)).sum().item()
    return loss / len(testloader), correct / len(testloader.dataset)


def partition_images(partition_id: int, num_partitions: int) -> torch.Tensor:
    """A client's training images, for `fl-sim attack --client-data` (scoring an audit)."""
    return load_data(partition_id, num_partitions, batch_size=1)[0].dataset.tensors[0]
