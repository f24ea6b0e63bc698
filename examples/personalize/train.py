"""Pretrain the personalisation example's CNN in float on the factory digits (rows 0..899,
original style); writes personalize.pt.  Deterministic (seeded, one thread), a few seconds.

    python examples/personalize/train.py
"""
from pathlib import Path

import numpy as np
import torch
from torch import nn

from user_digits import splits
from model import Net

HERE = Path(__file__).parent


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    s = splits()
    xtr, ytr = (torch.from_numpy(a) for a in s["pretrain"])
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(25):
        model.train()
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 32):
            idx = perm[i:i + 32]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        for name in ("pretrain", "user_test"):
            x, y = s[name]
            acc = (model(torch.from_numpy(x)).argmax(1).numpy() == y).mean()
            print(f"{name:<10} accuracy {100 * acc:.2f}%")
        from user_digits import USER_TEST, digits
        x, y = digits()
        acc = (model(torch.from_numpy(x[USER_TEST])).argmax(1).numpy() == y[USER_TEST]).mean()
        print(f"user_test without the style shift {100 * acc:.2f}%")
    torch.save(model.state_dict(), HERE / "personalize.pt")


if __name__ == "__main__":
    main()
