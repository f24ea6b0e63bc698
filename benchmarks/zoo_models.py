"""The models of benchmarks/zoo.py: torchvision and timm classification backbones, built
with random weights (num_classes 10, eval mode) and BatchNorm statistics calibrated on
seeded synthetic images, at a small input size.

torchvision from PyPI does not import beside the torch 2.13.0 CPU build (`operator
torchvision::nms does not exist`: its compiled ops are built for another torch); its model
definitions work once `torchvision._meta_registrations` is stubbed, which this module does
before importing it. Benchmarks only: the product never imports torchvision or timm.

    model, example = build("resnet18")       # also the body of each generated model.py
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from standin import synthetic_images  # noqa: E402

TORCHVISION = ("resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "squeezenet1_1",
               "shufflenet_v2_x0_5", "mnasnet0_5", "efficientnet_b0", "regnet_x_400mf",
               "regnet_y_400mf", "googlenet", "densenet121", "vgg11_bn", "alexnet")
TIMM = ("resnet10t", "mobilenetv3_small_050", "efficientnet_b0", "ghostnet_100", "mixnet_s",
        "regnetx_002")
BATCH = 2
SIZE = {"alexnet": 64, "googlenet": 32}      # the smallest input each accepts, default 32
CALIB_BATCHES = 2


def _torchvision():
    sys.modules.setdefault("torchvision._meta_registrations",
                           types.ModuleType("torchvision._meta_registrations"))
    import torchvision.models as tm
    return tm


def _make(name: str) -> nn.Module:
    family, _, arch = name.partition(":")
    if family == "tv":
        tm = _torchvision()
        kw = {"aux_logits": False, "init_weights": True} if arch == "googlenet" else {}
        return getattr(tm, arch)(weights=None, num_classes=10, **kw)
    if family == "timm":
        _torchvision()                     # timm imports torchvision when it is installed
        import timm
        return timm.create_model(arch, pretrained=False, num_classes=10)
    raise ValueError(f"unknown zoo model {name!r}: use tv:<name> or timm:<name>")


def names() -> list[str]:
    return [f"tv:{n}" for n in TORCHVISION] + [f"timm:{n}" for n in TIMM]


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    """The model (eval mode, random weights, seed 0) and a seeded example batch."""
    size = SIZE.get(name.partition(":")[2], 32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m = _make(name)
        bns = [b for b in m.modules() if isinstance(b, nn.modules.batchnorm._BatchNorm)]
        for b in bns:
            b.momentum = None              # cumulative average over the calibration batches
        m.train()
        with torch.no_grad():
            for i in range(CALIB_BATCHES):
                m(synthetic_images(8, seed=2000 + i, size=size))
    m.eval()
    return m, synthetic_images(BATCH, seed=7, size=size)
