"""LOSST: the loss gradient with a frozen teacher's logits as the target
(pseudo labels or distillation; docs/numerics.md, "Loss gradient with a teacher")."""
from __future__ import annotations

import numpy as np

from .numerics import rshift, sat8
from .state import (Trap, buf_name, check_range, lut_addr, nonzero, read_buf,
                    write_buf)


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
    zb, tb, db = (buf_name(f[b], b) for b in ("zbuf", "tbuf", "dbuf"))
    check_range(m, db, f["daddr"], n * k, f"LOSST logit error [{n},{k}] at daddr")
    E, S, _ = _softmax_parts(m, zb, f["zaddr"], lut_addr(m, f, "LOSST"), n, k, "student")
    F, ST, first = _softmax_parts(m, tb, f["taddr"], f["tlutaddr"], n, k, "teacher")
    P = (E << 15) // S
    if f["kd"]:
        G = P - (F << 15) // ST
    else:
        onehot = (np.arange(k)[None, :] == first[:, None]).astype(np.int64)
        confident = (np.int64(1 << 30) >= np.int64(f["thresh"]) * ST)
        G = np.where(confident, P - (onehot << 15), 0)
    D = sat8(rshift(G * f["rmul"], s, "nearest"))
    write_buf(m, db, f["daddr"], D, "LOSST logit error")


def _log_softmax(z: np.ndarray) -> np.ndarray:
    mx = z.max(axis=1, keepdims=True)
    return z - mx - np.log(np.exp(z - mx).sum(axis=1, keepdims=True))


def teacher_loss(z: np.ndarray, t: np.ndarray, teacher: dict) -> float:
    """The loss VALUE a teacher-target step descends (host side, float64, from the
    dequantized int8 logits z and teacher logits t; not computed on the device):
    pseudo: mean over the batch of CE(z, argmax t), rows below the confidence threshold
    counting 0; kd: T * mean CE(softmax(t/T), softmax(z/T))."""
    if teacher["target"] == "pseudo":
        lt = _log_softmax(t)
        keep = np.exp(lt.max(axis=1)) >= float(teacher["threshold"])
        ce = -_log_softmax(z)[np.arange(len(z)), np.argmax(t, axis=1)]
        return float(np.mean(ce * keep))
    T = float(teacher["temp"])
    q = np.exp(_log_softmax(t / T))
    return float(T * np.mean(-(q * _log_softmax(z / T)).sum(axis=1)))
