"""Pretrain the example LeNet in float on the first 1200 digits; writes lenet.pt.

    python examples/lenet/train.py
"""
from pathlib import Path

import torch
from torch import nn

from data import digits
from model import LeNet

HERE = Path(__file__).parent


def main():
    torch.manual_seed(0)
    x, y = digits()
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    xtr, ytr, xte, yte = x[:1200], y[:1200], x[1200:], y[1200:]
    model = LeNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(30):
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 32):
            idx = perm[i:i + 32]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
    with torch.no_grad():
        acc = (model(xte).argmax(1) == yte).float().mean().item()
    print(f"held-out accuracy {acc:.3f}")
    torch.save(model.state_dict(), HERE / "lenet.pt")


if __name__ == "__main__":
    main()
