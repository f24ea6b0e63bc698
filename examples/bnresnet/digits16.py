"""Data of the bnresnet example: the bundled 8x8 digits (examples/digits.npz),
bilinearly upsampled to 16x16, with the SAME row split as examples/personalize
(user_digits.py, whose loader and split this module reuses):

  rows    0..899   PRETRAIN: the "factory" domain, original style (train.py)
  rows  900..1349  USER TRAIN: the user's samples, style-shifted (fine-tuning data)
  rows 1350..1796  USER TEST:  the user's held-out samples, style-shifted (447 rows)

The user's style (``user_style``): THICKER STROKES at 16x16.  Two passes of the
cross-shaped 3x3 max filter of user_digits.dilate (about two pixels wider strokes at
16x16, the same relative widening as personalize's one pass at 8x8), blended with the
original (personalize's blend):
``x' = min(1, 0.4 x + 0.6 dilate(dilate(x)))``.  Fixed and deterministic.
"""
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.append(str(Path(__file__).resolve().parent.parent / "personalize"))
from user_digits import PRETRAIN, USER_TEST, USER_TRAIN, digits, dilate  # noqa: E402

SIZE = 16


def digits16():
    """Images in [0, 1] as float32 (N, 1, 16, 16) (bilinear, align_corners=False, in
    float64) and int64 labels."""
    x, y = digits()
    up = F.interpolate(torch.from_numpy(x).double(), size=(SIZE, SIZE), mode="bilinear",
                       align_corners=False)
    return up.clamp(0, 1).numpy().astype(np.float32), y


def user_style(x: np.ndarray) -> np.ndarray:
    """The user's fixed style shift: thicker strokes."""
    return np.minimum(1.0, 0.4 * x + 0.6 * dilate(dilate(x))).astype(np.float32)


def splits():
    """{'pretrain': (x, y), 'user_train': (x, y), 'user_test': (x, y)}."""
    x, y = digits16()
    return {"pretrain": (x[PRETRAIN], y[PRETRAIN]),
            "user_train": (user_style(x[USER_TRAIN]), y[USER_TRAIN]),
            "user_test": (user_style(x[USER_TEST]), y[USER_TEST]),
            "user_test_unshifted": (x[USER_TEST], y[USER_TEST])}
