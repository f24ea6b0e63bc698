"""The LeNet-style network of the example (8x8 digits, 10 classes) and its data."""
import numpy as np
import torch
from torch import nn


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)     # 8x8 -> 8x8
        self.pool1 = nn.MaxPool2d(2)                   # -> 4x4
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)    # -> 4x4
        self.pool2 = nn.MaxPool2d(2)                   # -> 2x2
        self.fc1 = nn.Linear(16 * 2 * 2, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.pool1(torch.relu(self.conv1(x)))
        x = self.pool2(torch.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        return self.fc2(x)


def digits():
    """scikit-learn's bundled 8x8 digits (no download): images in [0, 1], labels."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    return x, d.target.astype(np.int64)
