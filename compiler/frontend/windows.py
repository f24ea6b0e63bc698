"""Pooling-window rules both frontends share."""
from __future__ import annotations


def ceil_is_floor(hw, kernel, stride, pad) -> bool:
    """Whether ceil_mode gives the same windows as floor mode on an input of size `hw`:
    every (size + 2 pad - kernel) divides by the stride, so no partial window is added."""
    return all((n + 2 * p - k) % s == 0 for n, p, k, s in zip(hw, pad, kernel, stride))
