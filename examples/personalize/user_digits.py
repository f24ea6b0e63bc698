"""Data of the personalisation example: the bundled 8x8 digits (examples/digits.npz,
no download; see examples/digits.py).

Split (fixed, by row, the rows being ordered by writer):
  rows    0..899   PRETRAIN: the "factory" domain, original style (train.py)
  rows  900..1349  USER TRAIN: the user's samples, style-shifted (fine-tuning data)
  rows 1350..1796  USER TEST:  the user's held-out samples, style-shifted (447 rows)

The user's style (``user_style``): THICKER STROKES.  Each image is dilated by a 3x3
cross-shaped max filter (the pixel and its 4 neighbours) and blended with the original,
``x' = min(1, 0.4 * x + 0.6 * dilate(x))`` (pixels in [0, 1]): strokes get about one pixel
wider, a fixed, deterministic shift (no randomness).
"""
import sys
from pathlib import Path

import numpy as np

sys.path.append(str(Path(__file__).resolve().parent.parent))
from digits import digits  # noqa: E402,F401

PRETRAIN = slice(0, 900)
USER_TRAIN = slice(900, 1350)
USER_TEST = slice(1350, None)


def dilate(x: np.ndarray) -> np.ndarray:
    """Cross-shaped 3x3 max filter (centre and its 4 neighbours) over the last two axes,
    zero padding."""
    p = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)])
    h, w = x.shape[-2:]
    return np.max([p[..., i:i + h, j:j + w] for i, j in
                   ((1, 1), (0, 1), (2, 1), (1, 0), (1, 2))], axis=0)


def user_style(x: np.ndarray) -> np.ndarray:
    """The user's fixed style shift: thicker strokes."""
    return np.minimum(1.0, 0.4 * x + 0.6 * dilate(x)).astype(np.float32)


def splits():
    """{'pretrain': (x, y), 'user_train': (x, y), 'user_test': (x, y)}."""
    x, y = digits()
    return {"pretrain": (x[PRETRAIN], y[PRETRAIN]),
            "user_train": (user_style(x[USER_TRAIN]), y[USER_TRAIN]),
            "user_test": (user_style(x[USER_TEST]), y[USER_TEST])}
