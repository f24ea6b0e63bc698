"""Seeded random CNN/MLP models (+ masks) for the bit-exactness tests."""
import random

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, feats, head):
        super().__init__()
        self.features = nn.Sequential(*feats)
        self.head = nn.Sequential(*head)

    def forward(self, x):
        x = self.features(x)
        return self.head(torch.flatten(x, 1))


def random_case(seed: int):
    """(model, example_input, mask dict) for one seed; shapes stay small."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    n = rng.randint(1, 5)
    feats, layers = [], []
    if rng.random() < 0.2:                          # MLP on (N, F)
        c, h = rng.randint(3, 40), 0
        example = torch.randn(n, c)
    else:
        c, h = rng.randint(1, 5), rng.randint(5, 12)
        w = h + rng.randint(-1, 2)
        example = torch.randn(n, c, h, w)
        for _ in range(rng.randint(1, 3)):
            k = rng.choice([1, 2, 3, 3, 5])
            if k > min(h, w):
                k = min(h, w)
            s = rng.choice([1, 1, 2])
            p = rng.randint(0, k // 2)
            o = rng.randint(2, 21)
            conv = nn.Conv2d(c, o, k, stride=s, padding=p, bias=rng.random() < 0.8)
            feats.append(conv)
            layers.append((len(feats) - 1, o))
            h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
            c = o
            if rng.random() < 0.8:
                feats.append(nn.ReLU())
            if min(h, w) >= 3 and rng.random() < 0.5:
                pk, ps, pp = rng.choice([(2, 2, 0), (3, 2, 1), (2, 1, 0), (3, 3, 1)])
                feats.append(nn.MaxPool2d(pk, ps, pp))
                h, w = (h + 2 * pp - pk) // ps + 1, (w + 2 * pp - pk) // ps + 1
                if rng.random() < 0.3:
                    feats.append(nn.ReLU())
            if min(h, w) < 2:
                break
        c = c * h * w
    head, hl = [], []
    for _ in range(rng.randint(0, 2)):
        o = rng.randint(3, 30)
        head += [nn.Linear(c, o, bias=rng.random() < 0.8), nn.ReLU()]
        hl.append((len(head) - 2, o))
        c = o
    head.append(nn.Linear(c, rng.randint(2, 12)))
    model = Net(feats, head)
    with torch.no_grad():                            # a pretrained-looking weight scale
        for p in model.parameters():
            p.mul_(rng.uniform(0.5, 2.0))
    mask = {}
    for prefix, ls in (("features", layers), ("head", hl)):
        for i, o in ls:
            if rng.random() < 0.5:
                kept = sorted(rng.sample(range(o), rng.randint(1, o)))
                mask[f"{prefix}.{i}"] = kept
    return model, example, mask
