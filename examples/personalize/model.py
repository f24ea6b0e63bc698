"""edgec model file: a small CNN with BatchNorm for 8x8 digits, pretrained in float by
train.py on the "factory" digits (weights in personalize.pt); batch N = 16.

  conv1  3x3 1->16 (no bias) + bn1 + ReLU, maxpool 2     8x8 -> 4x4
  conv2  3x3 16->32 (no bias) + bn2 + ReLU, maxpool 2    4x4 -> 2x2
  fc1    128 -> 32 + ReLU
  fc2    32 -> 10 (logits)
"""
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from user_digits import splits  # noqa: E402

WEIGHTS = Path(__file__).with_name("personalize.pt")
BATCH = 16


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(32 * 2 * 2, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.pool1(torch.relu(self.bn1(self.conv1(x))))
        x = self.pool2(torch.relu(self.bn2(self.conv2(x))))
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


model = Net()
if WEIGHTS.exists():
    model.load_state_dict(torch.load(WEIGHTS, weights_only=True))
model.eval()

# calibration batch: the first 16 user training samples (the data the device will see)
example_input = torch.from_numpy(splits()["user_train"][0][:BATCH].copy())
