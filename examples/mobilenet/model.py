"""edgec model file: a small MobileNet-style CNN (10 classes, 32x32x3 input, batch N = 8).

Layers (spatial size after each):
  stem        conv3x3 3->16 stride 2 + BN + ReLU6                            16x16
  blocks.0    depthwise-separable 16->32           (dw 3x3 s1, pw 1x1)       16x16
  blocks.1    depthwise-separable 32->64  stride 2                           8x8
  blocks.2    inverted residual 64->64, expand x2:                           8x8
              pw 1x1 64->128 + BN + ReLU6, dw 3x3 + BN + ReLU6,
              pw 1x1 128->64 + BN (linear bottleneck), then ``+ x``
  blocks.3    depthwise-separable 64->128 stride 2                           4x4
  blocks.4    depthwise-separable 128->128                                   4x4
  pool        AdaptiveAvgPool2d(1), flatten, Dropout(0.2), classifier Linear(128, 10)
A depthwise-separable block is: depthwise 3x3 conv (groups = channels, no bias) + BN +
ReLU6, then pointwise 1x1 conv (no bias) + BN + ReLU6.  Module names read as
``<block>.<conv>`` / ``<block>.<conv>_bn``: ``stem.conv``, ``stem.bn``, ``blocks.0.dw``,
``blocks.0.dw_bn``, ``blocks.0.pw``, ``blocks.0.pw_bn``, ``blocks.2.expand``,
``blocks.2.project``, ``classifier``.

STAND-IN WEIGHTS.  There are no real pretrained weights offline, so this file builds a
deterministic stand-in at import time, exactly as examples/resnet18/model.py does:
``torch.manual_seed(0)`` default initialisation (inside ``torch.random.fork_rng``, so the
global RNG is left untouched); BatchNorm running statistics from train-mode passes
(``momentum=None``, cumulative average, ``torch.no_grad``, float64 so the float32 result
does not depend on the CPU) over fixed seeded batches of structured synthetic images
(smooth random fields); BN affine parameters perturbed with a seeded generator
(``gamma = 1 + 0.1 * N(0, 1)``, ``beta = 0.1 * N(0, 1)``); then ``model.eval()`` (Dropout
is the identity in eval mode).  ``example_input`` is a fixed seeded synthetic batch of 8.
Then ``pretrained.pt`` is loaded: these weights trained by ``examples/pretrain.py`` (see
the README).
"""
import os
import sys
from pathlib import Path

import torch
from torch import nn

N_CLASSES = 10
BATCH = 8
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from standin import standin, synthetic_images  # noqa: E402

CALIB_BATCHES = 4      # calibration batches of CALIB_SIZE images for the BN statistics
CALIB_SIZE = 16


class Stem(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU6()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class DepthwiseSeparable(nn.Module):
    """dw 3x3 (groups = cin) + BN + ReLU6, then pw 1x1 + BN + ReLU6."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.dw = nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False)
        self.dw_bn = nn.BatchNorm2d(cin)
        self.dw_act = nn.ReLU6()
        self.pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.pw_bn = nn.BatchNorm2d(cout)
        self.pw_act = nn.ReLU6()

    def forward(self, x):
        x = self.dw_act(self.dw_bn(self.dw(x)))
        return self.pw_act(self.pw_bn(self.pw(x)))


class InvertedResidual(nn.Module):
    """MobileNetV2 block with a residual add (stride 1, channels in = out):
    expand pw 1x1 + BN + ReLU6, dw 3x3 + BN + ReLU6, project pw 1x1 + BN, ``+ x``."""

    def __init__(self, c, expand):
        super().__init__()
        h = c * expand
        self.expand = nn.Conv2d(c, h, 1, bias=False)
        self.expand_bn = nn.BatchNorm2d(h)
        self.expand_act = nn.ReLU6()
        self.dw = nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False)
        self.dw_bn = nn.BatchNorm2d(h)
        self.dw_act = nn.ReLU6()
        self.project = nn.Conv2d(h, c, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(c)

    def forward(self, x):
        y = self.expand_act(self.expand_bn(self.expand(x)))
        y = self.dw_act(self.dw_bn(self.dw(y)))
        y = self.project_bn(self.project(y))
        return x + y


class MobileNet(nn.Module):
    def __init__(self, num_classes=N_CLASSES):
        super().__init__()
        self.stem = Stem(3, 16, stride=2)                  # 32x32 -> 16x16
        self.blocks = nn.Sequential(
            DepthwiseSeparable(16, 32),                    # 16x16
            DepthwiseSeparable(32, 64, stride=2),          # -> 8x8
            InvertedResidual(64, expand=2),                # 8x8, residual add
            DepthwiseSeparable(64, 128, stride=2),         # -> 4x4
            DepthwiseSeparable(128, 128),                  # 4x4
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        x = torch.flatten(self.pool(x), 1)
        return self.classifier(self.dropout(x))


def build(pretrained: bool = True) -> nn.Module:
    """The stand-in network; with ``pretrained``, the weights of examples/pretrain.py."""
    m = standin(MobileNet, CALIB_BATCHES, CALIB_SIZE)
    if pretrained:
        m.load_state_dict(torch.load(Path(__file__).resolve().parent / "pretrained.pt"))
    return m.eval()


# examples/pretrain.py sets EDGEC_PRETRAINING while it makes pretrained.pt
model = build(pretrained=not os.environ.get("EDGEC_PRETRAINING"))
example_input = synthetic_images(BATCH, seed=7)      # (8, 3, 32, 32)
