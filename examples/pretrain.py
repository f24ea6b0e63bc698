"""Pretrain an example backbone in float32 on a synthetic labelled task and save its weights.

No real pretrained CIFAR weights are available offline, and randomly initialised networks
are a poor stand-in: they are chaotic (a 1% input perturbation grows to ~10% at the last
conv), which no 8-bit training step can track.  So the examples are *trained*, briefly,
on a task that needs no data files: structured synthetic images (standin.synthetic_images)
labelled by a fixed random linear "teacher" on the 8x8 average-pooled image (10 classes).

    python examples/pretrain.py mobilenet [--steps 1500]   # writes examples/mobilenet/pretrained.pt

Training: SGD, momentum 0.9, weight decay 5e-4, batch 64, cosine learning-rate decay from
0.05, BatchNorm in train mode (its running statistics are the pretrained statistics);
batch i is synthetic_images(64, seed=5000 + i).  Prints the held-out accuracy (512 images,
seed 99).  Float32 training on a multi-threaded CPU is not bit-reproducible across
machines, so the weights are committed; rerunning gives an equivalent, not identical, file.
"""
import argparse
import importlib.util
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from standin import synthetic_images  # noqa: E402

TEACHER_SEED = 42


def teacher_labels(x: torch.Tensor) -> torch.Tensor:
    """Class of each image: argmax of a fixed random linear map of its 8x8 pooled pixels."""
    w = torch.randn(10, x.shape[1] * 64, generator=torch.Generator().manual_seed(TEACHER_SEED))
    return (F.adaptive_avg_pool2d(x, 8).flatten(1) @ w.t()).argmax(1)


def accuracy(model, n: int = 512, seed: int = 99) -> float:
    x = synthetic_images(n, seed=seed)
    with torch.no_grad():
        return float((model.eval()(x).argmax(1) == teacher_labels(x)).float().mean())


def pretrain(model, steps: int, batch: int = 64, lr: float = 0.05, log=print):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    t0 = time.time()
    for i in range(steps):
        model.train()
        x = synthetic_images(batch, seed=5000 + i)
        loss = F.cross_entropy(model(x), teacher_labels(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if (i + 1) % max(1, steps // 10) == 0:
            log(f"step {i + 1}/{steps}  loss {loss.item():.3f}  [{time.time() - t0:.0f}s]")
    return model.eval()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("example", choices=["mobilenet", "resnet18"])
    ap.add_argument("--steps", type=int, default=1500)
    args = ap.parse_args()
    out = HERE / args.example / "pretrained.pt"
    spec = importlib.util.spec_from_file_location("m", HERE / args.example / "model.py")
    mod = importlib.util.module_from_spec(spec)
    os.environ["EDGEC_PRETRAINING"] = "1"       # model.py: do not load pretrained.pt
    spec.loader.exec_module(mod)
    model = mod.build(pretrained=False)
    print(f"accuracy before: {accuracy(model):.3f}")
    torch.manual_seed(0)
    pretrain(model, args.steps)
    print(f"accuracy after {args.steps} steps: {accuracy(model):.3f}")
    torch.save(model.state_dict(), out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
