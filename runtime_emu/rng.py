"""Counter-based random bits (docs/numerics.md section 3).

All arithmetic is done on uint64 numpy arrays and masked to 32 bits after every step,
so nothing relies on wrapping signed overflow.
"""
from __future__ import annotations

import numpy as np

_M32 = np.uint64(0xFFFFFFFF)
_K_SEED = np.uint64(0x9E3779B1)
_K_TID = np.uint64(0x85EBCA77)
_K_IDX = np.uint64(0xC2B2AE3D)
_K_MIX1 = np.uint64(0x7FEB352D)
_K_MIX2 = np.uint64(0x846CA68B)


def rand32(seed: int, tid: int, idx) -> np.ndarray:
    """uint32 random words for the element indices `idx` (any integer array-like).

    h = (seed*0x9E3779B1 + tid*0x85EBCA77 + idx*0xC2B2AE3D) mod 2**32, then the
    xor-shift / multiply finaliser of numerics.md.  Indices are taken modulo 2**32
    (which does not change the hash, since only h mod 2**32 is used).
    """
    idx = np.asarray(idx)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"rand32: idx must be integers, got {idx.dtype}")
    i = (idx.astype(np.int64) & 0xFFFFFFFF).astype(np.uint64)
    s = np.uint64(int(seed) & 0xFFFFFFFF)
    t = np.uint64(int(tid) & 0xFFFFFFFF)
    base = ((s * _K_SEED) & _M32) + ((t * _K_TID) & _M32)          # < 2**33
    h = (base + ((i * _K_IDX) & _M32)) & _M32
    h ^= h >> np.uint64(16)
    h = (h * _K_MIX1) & _M32
    h ^= h >> np.uint64(15)
    h = (h * _K_MIX2) & _M32
    h ^= h >> np.uint64(16)
    return h.astype(np.uint32)
