"""Counter-based random bits (docs/numerics.md section 3).

All arithmetic is done on uint32 numpy arrays, whose multiplications and additions wrap
modulo 2**32 (unsigned: well defined), exactly the mod 2**32 of numerics.md; nothing
relies on wrapping signed overflow.
"""
from __future__ import annotations

import numpy as np

_M32 = 0xFFFFFFFF
_K_SEED = 0x9E3779B1
_K_TID = 0x85EBCA77
_K_IDX = np.uint32(0xC2B2AE3D)
_K_MIX1 = np.uint32(0x7FEB352D)
_K_MIX2 = np.uint32(0x846CA68B)
_S15, _S16 = np.uint32(15), np.uint32(16)


def index_hash(idx) -> np.ndarray:
    """idx*0xC2B2AE3D mod 2**32 as uint32 (any integer array-like): the index term of h.
    Worth caching for a tile geometry: rand32_at() then skips it."""
    idx = np.asarray(idx)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"rand32: idx must be integers, got {idx.dtype}")
    h = idx.astype(np.uint32)                       # the low 32 bits (two's complement)
    h *= _K_IDX
    return h


def rand32_at(seed: int, tid: int, offset: int, hashed: np.ndarray) -> np.ndarray:
    """rand32(seed, tid, offset + idx) for hashed = index_hash(idx): since h is linear
    in idx mod 2**32, the offset joins the seed and tid terms as one constant."""
    return _finalise(hashed + np.uint32(_base(seed, tid, offset)))


def _base(seed: int, tid: int, offset: int) -> int:
    """(seed*0x9E3779B1 + tid*0x85EBCA77 + offset*0xC2B2AE3D) mod 2**32."""
    return ((int(seed) & _M32) * _K_SEED + (int(tid) & _M32) * _K_TID
            + (int(offset) & _M32) * int(_K_IDX)) & _M32


def rand32_rows(seed: int, tids, offsets, hashed: np.ndarray) -> np.ndarray:
    """rand32_at(seed, tids[i], offsets[i], hashed) for every i, as rows [len, hashed]."""
    base = np.array([_base(seed, t, o) for t, o in zip(tids, offsets)], dtype=np.uint32)
    return _finalise(hashed[None, :] + base[:, None])


def _finalise(h: np.ndarray) -> np.ndarray:
    """The xor-shift / multiply finaliser of numerics.md section 3, in place on h."""
    h ^= h >> _S16
    h *= _K_MIX1
    h ^= h >> _S15
    h *= _K_MIX2
    h ^= h >> _S16
    return h


def rand32(seed: int, tid: int, idx) -> np.ndarray:
    """uint32 random words for the element indices `idx` (any integer array-like).

    h = (seed*0x9E3779B1 + tid*0x85EBCA77 + idx*0xC2B2AE3D) mod 2**32, then the
    xor-shift / multiply finaliser of numerics.md.  Indices are taken modulo 2**32
    (which does not change the hash, since only h mod 2**32 is used).
    """
    idx = np.asarray(idx)
    return rand32_at(seed, tid, 0, index_hash(idx.reshape(-1))).reshape(idx.shape)
