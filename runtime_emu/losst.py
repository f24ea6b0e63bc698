"""LOSST: the loss gradient with a frozen teacher's logits as the target
(pseudo labels or distillation; docs/numerics.md, "Loss gradient with a teacher")."""
from __future__ import annotations

import numpy as np

from .numerics import rshift, sat8
from .state import Trap, buf_name, check_range, nonzero, read_buf, vector_cycles, write_buf


def _softmax_parts(m, buf, addr, lutaddr, n, k, what):
    """(E, S, first argmax) of int8 logits [n, k]: E = LUT[max - z], S = sum_k E."""
    z = read_buf(m, buf, addr, n * k, f"LOSST {what} logits [{n},{k}]")
    z = z.astype(np.int64).reshape(n, k)
    lut = read_buf(m, "ABUF", lutaddr, 256, f"LOSST {what} exp table [256]").astype(np.int64)
    d = z.max(axis=1, keepdims=True) - z
    if d.max() > 255:
        raise Trap(f"{what} max - z = {int(d.max())} exceeds the exp table (logits must be "
                   "int8)")
    E = lut[d]
    S = E.sum(axis=1, keepdims=True)
    if (S <= 0).any():
        i = int(np.flatnonzero(S.reshape(-1) <= 0)[0])
        raise Trap(f"{what} softmax denominator of row {i} is {int(S[i, 0])} (<= 0): bad "
                   "exp table")
    return E, S, np.argmax(d == 0, axis=1)


def op_losst(m, f):
    nonzero(f, "n", "k")
    n, k, s = f["n"], f["k"], f["shift"]
    if s > 31:
        raise Trap(f"field shift={s} outside [0, 31]")
    if f["thresh"] > 1 << 15:
        raise Trap(f"field thresh={f['thresh']} above 2^15 (Q15 confidence)")
    db = buf_name(f["dbuf"], "dbuf")
    check_range(m, db, f["daddr"], n * k, f"LOSST logit error [{n},{k}] at daddr")
    E, S, _ = _softmax_parts(m, buf_name(f["zbuf"], "zbuf"), f["zaddr"], f["lutaddr"], n, k,
                             "student")
    F, ST, first = _softmax_parts(m, buf_name(f["tbuf"], "tbuf"), f["taddr"], f["tlutaddr"],
                                  n, k, "teacher")
    P = (E << 15) // S
    if f["kd"]:
        G = P - (F << 15) // ST
    else:
        onehot = (np.arange(k)[None, :] == first[:, None]).astype(np.int64)
        confident = (np.int64(1 << 30) >= np.int64(f["thresh"]) * ST)
        G = np.where(confident, P - (onehot << 15), 0)
    D = sat8(rshift(G * f["rmul"], s, "nearest"))
    write_buf(m, db, f["daddr"], D, "LOSST logit error")
    return vector_cycles(m, 2 * n * k)
