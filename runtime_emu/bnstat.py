"""BatchNorm adaptation instructions: CSTAT (channel sums and sums of squares) and BNADAPT
(new BN constants from them), docs/numerics.md section "BatchNorm adaptation".

BNADAPT works on exact (unbounded) integers: a handful of values per channel, once per
BatchNorm, so a plain loop over channels is both exact and cheap.
"""
from __future__ import annotations

from .numerics import INT32_MAX
from .state import INT8_BUFS, Trap, buf_name, nonzero, read_buf
from .vector import channel_sums


def op_cstat(m, f):
    channel_sums(m, f, "CSTAT", squares=True)


def _rdiv(a: int, b: int) -> int:
    """Round-half-up division of integers, b > 0."""
    return (2 * a + b) // (2 * b)


def _pow2_ratio(a: int, b: int, e: int) -> tuple[int, int]:
    """(a * 2^e, b) as integers: a negative exponent moves to the divisor."""
    return (a << e, b) if e >= 0 else (a, b << -e)


def op_bnadapt(m, f):
    nonzero(f, "c", "cnt")
    c, cnt, d, p, mom = f["c"], f["cnt"], f["d"], f["p"], f["m"]
    q = buf_name(f["qbuf"], "qbuf")
    if q not in INT8_BUFS:
        raise Trap(f"field qbuf: the BNADAPT scale is int8 (IBUF or WBUF), not {q}")
    stats = read_buf(m, "ABUF", f["saddr"], 2 * c, f"BNADAPT statistics [2,{c}] at saddr")
    B = read_buf(m, "ABUF", f["baddr"], c, f"BNADAPT bias [{c}] at baddr")
    Q = read_buf(m, q, f["qaddr"], c, f"BNADAPT scale [{c}] at qaddr")
    lhs_shift, rhs_shift = max(0, -2 * p), max(0, 2 * p)
    rhs = (4 * cnt * cnt) << rhs_shift
    newB, newQ = [], []
    for k in range(c):
        s1, s2, b, qo = int(stats[k]), int(stats[c + k]), int(B[k]), int(Q[k])
        a = s2 * cnt - s1 * s1 + f["eps"]
        qb = 0
        for bit in (64, 32, 16, 8, 4, 2, 1):        # largest qb with the test true
            cand = qb + bit
            if cand <= 127 and (2 * cand - 1) ** 2 * a << lhs_shift <= rhs:
                qb = cand
        qn = qo + _rdiv(qb - qo, 1 << mom)
        if f["mode"] == 0:
            bn = b - _rdiv(*_pow2_ratio(s1, cnt << mom, d))
        else:
            tb = -_rdiv(*_pow2_ratio(s1 * qb, cnt, d))
            bn = b + _rdiv(tb - b, 1 << mom)
        newB.append(min(max(bn, -INT32_MAX), INT32_MAX))
        newQ.append(min(max(qn, -127), 127))
    m.bufs["ABUF"][f["baddr"]:f["baddr"] + c] = newB
    m.bufs[q][f["qaddr"]:f["qaddr"] + c] = newQ
