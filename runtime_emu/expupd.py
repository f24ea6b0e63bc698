"""EXPUPD: the exponent-move rule of dynamic fixed point (docs/numerics.md section 8).

The table T at XBUF address xaddr holds R registers, R words per row: E (current
exponent), P (previous), C (calm steps), then the pairs (S, Q) of this step and (S', Q')
of the last one, then lo, hi, thr.  Per register, all R at once:

    P = E;  S', Q' = S, Q;  S = Q = 0
    if S' > thr: E += 1, C = 0
    elif Q' < 64: C += 1, and if C >= M: E -= 1, C = 0
    else: C = 0
    E = min(max(E, lo), hi)
"""
from __future__ import annotations

import numpy as np

from .state import x_check

CALM_Q = 64          # a step is calm when its largest |q| stays below this


def op_expupd(m, f):
    R, T, calm = f["count"], f["xaddr"], f["calm"]
    x_check(T, 10 * R, "xaddr")
    X = m.bufs["XBUF"]
    tab = X[T:T + 10 * R].astype(np.int64)        # a copy: every read before any write
    E, C = tab[:R], tab[2 * R:3 * R]
    SQ = tab[3 * R:5 * R]                            # (S, Q) pairs of this step
    S, Q = SQ[0::2], SQ[1::2]
    lo, hi, thr = tab[7 * R:8 * R], tab[8 * R:9 * R], tab[9 * R:10 * R]
    coarser = S > thr
    quiet = ~coarser & (Q < CALM_Q)
    Cn = np.where(quiet, C + 1, 0)
    finer = quiet & (Cn >= calm)
    Cn[finer] = 0
    En = np.minimum(np.maximum(E + coarser - finer, lo), hi)
    # every new value fits int32: En is clamped by int32 bounds, and C + 1 = 2**31 is
    # >= calm (<= 255), so it resets to 0
    X[T + R:T + 2 * R] = E                           # P = E
    X[T:T + R] = En
    X[T + 2 * R:T + 3 * R] = Cn
    X[T + 5 * R:T + 7 * R] = SQ                      # S', Q' = S, Q
    X[T + 3 * R:T + 5 * R] = 0                       # S = Q = 0
