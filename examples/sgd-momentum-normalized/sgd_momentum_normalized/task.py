"""sgd-momentum-normalized: model, data and training.

As in Flower's PyTorch tutorials: a LeNet-style CNN (ReLU, max-pool), inputs normalised in the
data pipeline with the dataset's mean and standard deviation, SGD with momentum and weight decay
for a number of local epochs. The data are the 5,000 real MNIST digits that ship with this
machine's packages; each client's partition is shuffled once when the data are split.
"""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from torchvision.transforms import Normalize

from fl_sim.data import load_dataset

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
normalize = Normalize(MNIST_MEAN, MNIST_STD)


class Net(nn.Module):
    """LeNet-5 style CNN (from 'PyTorch: A 60 Minute Blitz', for 1x28x28 digits)."""

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
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def client_data(partition_id: int, num_partitions: int, images: int = 0):
    """A client's training images (in [0, 1], before normalisation) and labels, in the order it trains on them.

    Also what ``fl-sim attack --client-data`` is given to score an audit and check the recipe."""
    data = load_dataset("mnist-5k")
    order = np.random.default_rng(2024).permutation(len(data.train_y))
    part = np.array_split(order, num_partitions)[partition_id]
    if images:
        part = part[:images]
    return data.train_x[part], data.train_y[part]


def load_data(partition_id: int, num_partitions: int, batch_size: int, images: int = 0):
    """Train and test loaders, inputs normalised in the pipeline."""
    x, y = client_data(partition_id, num_partitions, images)
    data = load_dataset("mnist-5k")
    train = TensorDataset(normalize(x), y)
    test = TensorDataset(normalize(data.test_x[:500]), data.test_y[:500])
    return DataLoader(train, batch_size=batch_size), DataLoader(test, batch_size=256)


def train(net, trainloader, epochs, lr, momentum, weight_decay, device):
    """Train the model on the training set."""
    net.to(device)
    criterion = torch.nn.CrossEntropyLoss().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
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
    print(f"trained {steps} steps on {len(trainloader.dataset)} images, mean loss {running_loss / max(steps, 1):.4f}")
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
