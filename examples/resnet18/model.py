"""edgec model file: a CIFAR-shaped ResNet-18 (10 classes, 32x32x3 input, batch N = 8).

Architecture: the standard BasicBlock ResNet-18 (He et al. 2016) in its CIFAR form --
3x3 stride-1 stem conv without a maxpool, four stages of two BasicBlocks with widths
64/128/256/512 (stride 2 at the start of stages 2-4), BatchNorm2d after every conv,
1x1-conv+BN downsample shortcuts, ``out = relu(out + shortcut)``, AdaptiveAvgPool2d(1),
flatten, Linear(512, 10).  Module names follow torchvision (``conv1``, ``bn1``,
``layer1.0.conv1``, ``layer2.0.downsample.0`` / ``.1``, ``fc``).

STAND-IN WEIGHTS.  No real pretrained CIFAR weights are available offline, and a 45 MB
weight file does not belong in the repository, so this file builds a deterministic
stand-in for "pretrained" weights at import time (a few hundred ms of CPU):

1. ``torch.manual_seed(0)`` and PyTorch's default initialisation (inside
   ``torch.random.fork_rng``: importing this file leaves the global RNG untouched);
2. realistic BatchNorm running statistics: the model runs in train mode with
   ``momentum=None`` (cumulative average over batches) under ``torch.no_grad`` on
   ``CALIB_BATCHES`` fixed seeded batches of structured synthetic images (smooth random
   fields, see ``synthetic_images``; not white noise).  The calibration runs in float64 so
   the float32 statistics do not depend on the CPU's conv kernels or thread count;
3. BN affine parameters perturbed with a seeded generator so they are not trivial:
   ``gamma = 1 + 0.1 * N(0, 1)``, ``beta = 0.1 * N(0, 1)``;
4. ``model.eval()``; momentum is restored to PyTorch's default 0.1.

``example_input`` is a fixed seeded batch of 8 images of the same synthetic kind.  The
logits are therefore not meaningful class scores; the model has the shapes, the layer
structure and the numeric ranges (normalised activations, non-trivial BN) of a real one.
"""
import sys
from pathlib import Path

import torch
from torch import nn

N_CLASSES = 10
BATCH = 8
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from standin import standin, synthetic_images  # noqa: E402

CALIB_BATCHES = 2      # calibration batches of CALIB_SIZE images for the BN statistics
CALIB_SIZE = 8


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out = out + identity
        return self.relu(out)


class ResNet18(nn.Module):
    def __init__(self, num_classes=N_CLASSES):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)   # 32x32
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(64, 2, stride=1)                     # 32x32
        self.layer2 = self._make_layer(128, 2, stride=2)                    # 16x16
        self.layer3 = self._make_layer(256, 2, stride=2)                    # 8x8
        self.layer4 = self._make_layer(512, 2, stride=2)                    # 4x4
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def _make_layer(self, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)




def _small_residual_branches(m: nn.Module) -> None:
    # like torchvision's zero_init_residual (trained ResNets end their residual branches
    # with small BN weights): each block's last BN starts at 0.25, so the stand-in is a
    # well-conditioned backbone rather than a chaotic random network
    for name, mod in m.named_modules():
        if name.endswith(".bn2"):
            mod.weight.fill_(0.25)


model = standin(ResNet18, CALIB_BATCHES, CALIB_SIZE, prepare=_small_residual_branches)
example_input = synthetic_images(BATCH, seed=7)      # (8, 3, 32, 32)
