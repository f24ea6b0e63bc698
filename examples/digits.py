"""The 8x8 handwritten digits every example trains on, shipped in examples/digits.npz.

1797 images of 8x8 integer pixels in 0..16 with their labels 0..9, in the row order of
the UCI "Optical Recognition of Handwritten Digits" test set (E. Alpaydin, C. Kaynak,
1998; CC BY 4.0), which is ordered by writer; the same data and order as scikit-learn's
``load_digits()``, so no download and no scikit-learn are needed.
"""
from pathlib import Path

import numpy as np

NPZ = Path(__file__).resolve().parent / "digits.npz"


def digits():
    """Images in [0, 1] as float32 (N, 1, 8, 8) and int64 labels."""
    with np.load(NPZ) as d:
        images, labels = d["images"], d["labels"]
    return (images / 16.0).astype(np.float32)[:, None], labels.astype(np.int64)
