"""A user domain for the MobileNet example (benchmarks/parity.py): the synthetic task the
network was pretrained on (examples/pretrain.py: standin.synthetic_images labelled by the
fixed random linear teacher on the 8x8-pooled image), seen through a camera that swaps
its red and blue channels (BGR order).

  user_train  synthetic_images(512, seed=20)   the user's fine-tuning data
  user_test   synthetic_images(1024, seed=21)  the user's held-out data

Labels are the teacher's classes of the ORIGINAL (unswapped) image: the content is the
same, only the colour channels the model sees differ.  The seeds are disjoint from
pretraining (5000 + i), the held-out set of pretrain.py (99), BN calibration (1000 + i)
and example_input (7).  Pretrained accuracy: about 77% on the unswapped test images,
about 63% on the swapped ones.
"""
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pretrain import teacher_labels  # noqa: E402
from standin import synthetic_images  # noqa: E402

TRAIN_SEED, TEST_SEED = 20, 21
TRAIN_ROWS, TEST_ROWS = 512, 1024


def user_style(x: torch.Tensor) -> torch.Tensor:
    """The user's fixed colour shift: red and blue channels swapped."""
    return x[:, [2, 1, 0]].contiguous()


def _split(n: int, seed: int):
    x = synthetic_images(n, seed=seed)
    return user_style(x).numpy(), teacher_labels(x).numpy().astype(np.int64)


def splits():
    """{'user_train': (x, y), 'user_test': (x, y)}: float32 (M, 3, 32, 32), int64 (M,)."""
    return {"user_train": _split(TRAIN_ROWS, TRAIN_SEED),
            "user_test": _split(TEST_ROWS, TEST_SEED)}
