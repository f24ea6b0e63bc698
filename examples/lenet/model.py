"""edgec model file: a LeNet-style CNN for 8x8 digits, pretrained in float by train.py
(weights in lenet.pt), and one on-device batch of 16 held-out digits."""
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from data import digits  # noqa: E402

WEIGHTS = Path(__file__).with_name("lenet.pt")


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


model = LeNet()
if WEIGHTS.exists():
    model.load_state_dict(torch.load(WEIGHTS, weights_only=True))

_x, _ = digits()
example_input = torch.from_numpy(_x[1200:1216].copy())   # batch N = 16
