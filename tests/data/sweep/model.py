"""A tiny model for the sweep tests (tests/workflows/test_sweep.py): an MLP on the 8x8
digits, 64 -> 16 -> 10, with seeded initial weights (not trained: fine-tuning has work to
do); batch N = 8, the calibration batch is digits rows 0-7."""
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "examples"))
from digits import digits  # noqa: E402


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


torch.manual_seed(0)
model = MLP().eval()
example_input = torch.from_numpy(digits()[0][:8].copy())
