"""edgec model file: the pretrained LeNet and one on-device batch of 16 digits."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from net import LeNet, digits  # noqa: E402

model = LeNet()
model.load_state_dict(torch.load(Path(__file__).with_name("lenet.pt"), weights_only=True))

_x, _ = digits()
example_input = torch.from_numpy(_x[1200:1216].copy())   # batch N = 16
