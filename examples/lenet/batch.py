"""Write one on-device batch (16 held-out digits and their labels) as batch.npz.

    python examples/lenet/batch.py batch.npz
"""
import sys

import numpy as np

from data import digits

if __name__ == "__main__":
    x, y = digits()
    np.savez(sys.argv[1] if len(sys.argv) > 1 else "batch.npz",
             x=x[1300:1316].astype(np.float32), y=y[1300:1316].astype(np.int64))
