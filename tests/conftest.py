import os

import pytest
import torch
from torch import nn

torch.set_num_threads(1)
os.environ.setdefault("PRUNELAB_PROGRESS", "0")


class TinyConvNet(nn.Module):
    """Conv + BN + Linear: every kind of parameter the masks must handle."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc1 = nn.Linear(4 * 4 * 4, 16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = nn.functional.max_pool2d(x, 2).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.fixture
def tiny_net():
    torch.manual_seed(0)
    return TinyConvNet()


@pytest.fixture
def tiny_data():
    """A learnable 3-class problem on 1x8x8 inputs, as (x, y) tensors."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (256,), generator=g)
    means = torch.randn(3, 1, 8, 8, generator=g)
    x = means[y] + 0.5 * torch.randn(256, 1, 8, 8, generator=g)
    return x, y
