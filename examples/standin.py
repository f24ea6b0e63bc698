"""Deterministic stand-in "pretrained" weights for the examples without a weight file.

``synthetic_images`` makes structured images (smooth random fields, not white noise);
``standin`` initialises a model with a fixed seed, gives every BatchNorm realistic running
statistics from train-mode passes over seeded synthetic batches (in float64, so the
result does not depend on the thread count), perturbs the BN affine parameters, and
returns it in eval mode.  Importing leaves the global RNG untouched.
"""
import torch
from torch import nn
from torch.nn import functional as F


def synthetic_images(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """``n`` structured RGB images (n, 3, size, size), float32, roughly zero mean / unit
    variance like normalised CIFAR: a sum of smooth random fields at several scales
    (bilinearly upsampled low-resolution noise, 1/f-like amplitudes), a luminance field
    shared by the three channels plus weaker per-channel colour, a random per-image
    brightness and contrast.  Deterministic in ``seed`` (computed in float64)."""
    g = torch.Generator().manual_seed(seed)
    d = torch.float64
    lum = torch.zeros(n, 1, size, size, dtype=d)
    col = torch.zeros(n, 3, size, size, dtype=d)
    for res, amp in ((2, 1.0), (4, 0.7), (8, 0.45), (16, 0.25)):
        up = lambda t: F.interpolate(t, size=(size, size), mode="bilinear",  # noqa: E731
                                     align_corners=False)
        lum += amp * up(torch.randn(n, 1, res, res, generator=g, dtype=d))
        col += 0.4 * amp * up(torch.randn(n, 3, res, res, generator=g, dtype=d))
    x = lum + col
    x = (x - x.mean(dim=(1, 2, 3), keepdim=True)) / x.std(dim=(1, 2, 3), keepdim=True)
    contrast = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=g, dtype=d)
    bright = 0.5 * torch.randn(n, 1, 1, 1, generator=g, dtype=d)
    return (contrast * x + bright).to(torch.float32)


def standin(make, calib_batches: int, calib_size: int, prepare=None) -> nn.Module:
    """``make()`` with deterministic stand-in weights (see the module docstring);
    ``prepare(model)``, if given, adjusts the initial weights before calibration."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m = make()
    if prepare is not None:
        with torch.no_grad():
            prepare(m)
    bns = [b for b in m.modules() if isinstance(b, nn.BatchNorm2d)]
    for b in bns:
        b.momentum = None                 # cumulative moving average over the batches
    m.double().train()
    with torch.no_grad():
        with torch.random.fork_rng(devices=[]):    # train-mode Dropout draws from the RNG
            for i in range(calib_batches):
                m(synthetic_images(calib_size, seed=1000 + i).double())
    m.float()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for b in bns:
            b.momentum = 0.1
            b.weight.mul_(1 + 0.1 * torch.randn(b.num_features, generator=g))
            b.bias.copy_(0.1 * torch.randn(b.num_features, generator=g))
    return m.eval()
