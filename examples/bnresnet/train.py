"""Pretrain the bnresnet example in float on the factory digits (rows 0..899, original
style, 16x16); writes bnresnet.pt.  Deterministic (seeded, one thread), seconds.

    python examples/bnresnet/train.py
"""
import sys
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from digits16 import splits  # noqa: E402
from model import BNResNet  # noqa: E402

EPOCHS = 12


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    s = splits()
    xtr, ytr = (torch.from_numpy(a) for a in s["pretrain"])
    model = BNResNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(EPOCHS):
        model.train()
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 32):
            idx = perm[i:i + 32]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        for name in ("pretrain", "user_test_unshifted", "user_test"):
            x, y = s[name]
            acc = (model(torch.from_numpy(x)).argmax(1).numpy() == y).mean()
            print(f"{name:<20} accuracy {100 * acc:.2f}%")
    torch.save(model.state_dict(), HERE / "bnresnet.pt")
    print(f"wrote {HERE / 'bnresnet.pt'}")


if __name__ == "__main__":
    main()
