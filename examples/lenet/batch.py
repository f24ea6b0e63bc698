"""Write one on-device batch (16 held-out digits and their labels) as batch.npz.

    python examples/lenet/batch.py batch.npz
"""
import argparse

import numpy as np

from data import digits

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="write 16 held-out digits (x float32 "
                                 "[16,1,8,8], y int64 [16]) as an edgec batch file")
    ap.add_argument("output", nargs="?", default="batch.npz", help="default batch.npz")
    out = ap.parse_args().output
    x, y = digits()
    np.savez(out, x=x[1300:1316].astype(np.float32), y=y[1300:1316].astype(np.int64))
