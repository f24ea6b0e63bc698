"""Users of the sweep example (users.toml): the same split as user_digits.py (user train
rows 900-1349, user test rows 1350-1796 of the bundled digits), each user with another
fixed, deterministic style shift of the 8x8 images (pixels in [0, 1]):

  thick     thicker strokes: min(1, 0.4 x + 0.6 dilate(x)) (user_digits.user_style)
  bold      much thicker strokes: dilate(dilate(x)) blended, min(1, 0.5 x + 0.5 d2)
  thin      thinner strokes: erode(x) (a cross-shaped 3x3 min filter) blended, 0.5 x + 0.5 e
  slant     italic: row r shifted right by round((3.5 - r) / 2) pixels (top 2 right, bottom 2 left)
  noisy     additive Gaussian noise, sigma 0.15 (seeded), clipped to [0, 1]
  inverted  inverted contrast: 1 - x (dark strokes on a light background)
  small     written smaller: the image shrunk to 6x6 (nearest pixel) in the centre
  shifted   written off-centre: moved one pixel right and one down
  faint     faint pen: 0.45 x
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from user_digits import USER_TEST, USER_TRAIN, digits, dilate, user_style  # noqa: E402


def erode(x: np.ndarray) -> np.ndarray:
    """Cross-shaped 3x3 min filter over the last two axes; outside the image counts as 0,
    so strokes at the border erode too."""
    return -dilate(-x)


def slant(x: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x)
    for r in range(x.shape[-2]):
        s = int(round((3.5 - r) / 2))
        out[..., r, :] = np.roll(x[..., r, :], s, axis=-1)
        if s > 0:
            out[..., r, :s] = 0
        elif s < 0:
            out[..., r, s:] = 0
    return out


def small(x: np.ndarray) -> np.ndarray:
    idx = np.round(np.linspace(0, 7, 6)).astype(int)
    out = np.zeros_like(x)
    out[..., 1:7, 1:7] = x[..., idx[:, None], idx[None, :]]
    return out


def shifted(x: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x)
    out[..., 1:, 1:] = x[..., :-1, :-1]
    return out


def noisy(x: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(x + rng.normal(0, 0.15, x.shape), 0, 1)


STYLES = {
    "thick": ("thicker strokes (x' = min(1, 0.4x + 0.6 dilate(x)))", user_style),
    "bold": ("much thicker strokes (two dilations, blended 1:1)",
             lambda x: np.minimum(1, 0.5 * x + 0.5 * dilate(dilate(x)))),
    "thin": ("thinner strokes (erosion, blended 1:1)", lambda x: 0.5 * x + 0.5 * erode(x)),
    "slant": ("italic: rows shifted, top to the right", slant),
    "noisy": ("Gaussian pixel noise, sigma 0.15", None),
    "inverted": ("inverted contrast (1 - x)", lambda x: 1.0 - x),
    "small": ("written smaller (6x6 in the centre)", small),
    "shifted": ("one pixel right and down", shifted),
    "faint": ("faint pen (0.45 x)", lambda x: 0.45 * x),
}


def styled(name: str, x: np.ndarray, seed: int) -> np.ndarray:
    fn = STYLES[name][1] or (lambda v: noisy(v, seed))
    return np.asarray(fn(x), dtype=np.float32)


def users(names=None, test_rows: int | None = None) -> dict:
    """{name: {"train": (x, y), "test": (x, y), "style": text}} for the styles ``names``
    (default: all, in STYLES order); ``test_rows`` keeps the first rows of the test split."""
    x, y = digits()
    out = {}
    for i, name in enumerate(names or STYLES):
        if name not in STYLES:
            raise ValueError(f"unknown style {name!r}; known: {', '.join(STYLES)}")
        te = slice(USER_TEST.start, None if test_rows is None else USER_TEST.start + test_rows)
        out[name] = {"train": (styled(name, x[USER_TRAIN], 2 * i), y[USER_TRAIN]),
                     "test": (styled(name, x[te], 2 * i + 1), y[te]),
                     "style": STYLES[name][0]}
    return out
