"""scikit-learn's bundled 8x8 digits (no download): images in [0, 1] as (N,1,8,8), labels."""
import numpy as np


def digits():
    from sklearn.datasets import load_digits
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    return x, d.target.astype(np.int64)
