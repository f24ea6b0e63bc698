"""edgec model file: a small BatchNorm ResNet for 16x16 digits, pretrained in float by
train.py on the "factory" digits (weights in bnresnet.pt); batch N = 16.

  stem     conv 3x3 1->16 (no bias) + bn + ReLU                              16x16
  layer1   basic block 16->16: conv 3x3 + bn + ReLU, conv 3x3 + bn, + x, ReLU  16x16
  layer2   basic block 16->32 stride 2: conv 3x3 s2 + bn + ReLU, conv 3x3 + bn,
           + shortcut (conv 1x1 s2 + bn), ReLU                                 8x8
  layer3   basic block 32->32: as layer1                                       8x8
  pool     AdaptiveAvgPool2d(1), flatten, fc Linear(32, 10) (logits)
"""
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits16 import splits  # noqa: E402

WEIGHTS = Path(__file__).with_name("bnresnet.pt")
BATCH = 16


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        s = x if self.shortcut is None else self.shortcut(x)
        return torch.relu(y + s)


class BNResNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.layer1 = BasicBlock(16, 16)
        self.layer2 = BasicBlock(16, 32, stride=2)
        self.layer3 = BasicBlock(32, 32)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


model = BNResNet()
if WEIGHTS.exists():
    model.load_state_dict(torch.load(WEIGHTS, weights_only=True))
model.eval()

# calibration batch: the first 16 user training samples (the data the device will see)
example_input = torch.from_numpy(splits()["user_train"][0][:BATCH].copy())
