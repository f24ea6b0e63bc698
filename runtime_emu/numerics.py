"""Integer helpers of docs/numerics.md sections 1-2, on int64 numpy arrays."""
from __future__ import annotations

import numpy as np

INT32_MAX = 2**31 - 1          # accumulators live in [-(2**31-1), 2**31-1]


def sat(v: np.ndarray, bits: int) -> np.ndarray:
    """sat_b(v) = min(max(v, -(2**(b-1)-1)), 2**(b-1)-1)."""
    hi = (1 << (bits - 1)) - 1
    return clamp(v, -hi, hi)


def sat8(v: np.ndarray) -> np.ndarray:
    return clamp(v, -127, 127)


def clamp(v: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """min(max(v, lo), hi), elementwise (np.clip without its per-call overhead)."""
    return np.minimum(np.maximum(v, lo), hi)


def rshift(v: np.ndarray, s: int, mode: str, r: np.ndarray | None = None) -> np.ndarray:
    """rshift(v, s, mode, r): v int64, |s| <= 31, r the uint32 random words (stochastic)."""
    v = np.asarray(v, dtype=np.int64)
    s = int(s)
    if not -31 <= s <= 31:
        raise ValueError(f"shift {s} outside [-31, 31]")
    if s <= 0:
        return v * np.int64(1 << (-s))
    if mode == "nearest":
        return (v + np.int64(1 << (s - 1))) >> np.int64(s)
    if mode == "stochastic":
        if r is None:
            raise ValueError("stochastic rounding needs random words")
        add = (np.asarray(r, dtype=np.uint32) >> np.uint32(32 - s)).astype(np.int64)
        return (v + add) >> np.int64(s)
    raise ValueError(f"unknown rounding mode {mode!r}")


def rshift32(v: np.ndarray, s: int, r: np.ndarray | None = None) -> np.ndarray:
    """rshift(v, s, mode, r) for int32 `v` and 1 <= s <= 31 without leaving int32:
    nearest (r None) adds bit s-1 of v to v >> s; stochastic adds the carry out of
    (v mod 2**s) + (r >> (32 - s)), formed in uint32 (< 2**32).  Returns a new int32
    array (every result fits: |v >> s| < 2**30)."""
    q = v >> np.int32(s)
    if r is None:
        carry = v >> np.int32(s - 1)
        carry &= np.int32(1)
    else:
        carry = v.view(np.uint32) & np.uint32((1 << s) - 1)
        carry += r >> np.uint32(32 - s)
        carry >>= np.uint32(s)
        carry = carry.view(np.int32)
    q += carry
    return q
