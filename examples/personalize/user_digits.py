"""Data of the personalisation example: scikit-learn's bundled 8x8 digits (no download).

Split (fixed, by row of ``load_digits()``, which is ordered by writer):
  rows    0..899   PRETRAIN: the "factory" domain, original style (train.py)
  rows  900..1349  USER TRAIN: the user's samples, style-shifted (fine-tuning data)
  rows 1350..1796  USER TEST:  the user's held-out samples, style-shifted (447 rows)

The user's style (``user_style``): THICKER STROKES.  Each image is dilated by a 3x3
cross-shaped max filter (the pixel and its 4 neighbours) and blended with the original,
``x' = min(1, 0.4 * x + 0.6 * dilate(x))`` (pixels in [0, 1]): strokes get about one pixel
wider, a fixed, deterministic shift (no randomness).
"""
import numpy as np

PRETRAIN = slice(0, 900)
USER_TRAIN = slice(900, 1350)
USER_TEST = slice(1350, None)


def digits():
    """Images in [0, 1] as float32 (N, 1, 8, 8) and int64 labels."""
    from sklearn.datasets import load_digits
    d = load_digits()
    return (d.images / 16.0).astype(np.float32)[:, None], d.target.astype(np.int64)


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
