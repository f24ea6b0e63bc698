"""MAC: tiled convolution on the MAC array (patterns FP, EB, WG), int8 x int8 -> int32.

Geometry (global coordinates): output/error row y (global) and kernel row kh touch X row
g = y*sh - ph + kh.  Y tile row r is global row yh0 + r, X tile row r is global row
xh0 + r; a term whose X element lies outside the X tile contributes 0.  Columns alike.

Every tap (kh, kw) is one dense contraction over whole tiles (BLAS float64 where the
bound on |sum| stays below 2**53, exact int64 otherwise).
"""
from __future__ import annotations

import numpy as np

from edgec.isa.table import PATTERNS

from .numerics import INT32_MAX
from .state import INT8_BUFS, Trap, buf_name, check_range, nonzero, read_buf

_EXACT_F64 = 2**53


def _tap_span(n_y: int, y0: int, s: int, p: int, k: int, x0: int, n_x: int):
    """Y tile indices whose X element for kernel offset k lies in the X tile.

    Returns (slice into the Y tile, slice into the X tile) or None when empty.  The
    map r -> (y0 + r)*s - p + k - x0 is increasing with step s, so both are slices.
    """
    base = y0 * s - p + k - x0            # X tile index of Y tile row 0
    r_lo = 0 if base >= 0 else (-base + s - 1) // s
    hi = n_x - 1 - base
    if hi < 0:
        return None
    r_hi = min(n_y - 1, hi // s)
    if r_lo > r_hi:
        return None
    g_lo = base + r_lo * s
    g_hi = base + r_hi * s
    return slice(r_lo, r_hi + 1), slice(g_lo, g_hi + 1, s)


def op_mac(m, f):
    if f["pattern"] >= len(PATTERNS):
        raise Trap(f"field pattern={f['pattern']} is not FP/EB/WG")
    pat = PATTERNS[f["pattern"]]
    nonzero(f, "n", "ci", "co", "xh", "xw", "yh", "yw", "kh", "kw", "sh", "sw")
    n, ci, co = f["n"], f["ci"], f["co"]
    xh, xw, yh, yw = f["xh"], f["xw"], f["yh"], f["yw"]
    KH, KW, sh, sw, ph, pw = f["kh"], f["kw"], f["sh"], f["sw"], f["ph"], f["pw"]
    abuf, bbuf = buf_name(f["abuf"], "abuf"), buf_name(f["bbuf"], "bbuf")
    for nm, b in (("abuf", abuf), ("bbuf", bbuf)):
        if b not in INT8_BUFS:
            raise Trap(f"field {nm}={b}: MAC operands must be int8 (IBUF or WBUF)")
    xs, ys, ws = (n, ci, xh, xw), (n, co, yh, yw), (co, ci, KH, KW)
    a_shape, b_shape, c_shape = {"FP": (xs, ws, ys), "EB": (ys, ws, xs),
                                 "WG": (ys, xs, ws)}[pat]
    a_n, b_n, c_n = (int(np.prod(s)) for s in (a_shape, b_shape, c_shape))
    check_range(m, "ABUF", f["caddr"], c_n, f"MAC {pat} C tile {list(c_shape)} at caddr")
    A = read_buf(m, abuf, f["aaddr"], a_n, f"MAC {pat} A tile {list(a_shape)} at aaddr")
    B = read_buf(m, bbuf, f["baddr"], b_n, f"MAC {pat} B tile {list(b_shape)} at baddr")

    # Bound on |C| (int8 operands may hold -128): number of products per output * 2**14.
    terms = {"FP": ci * KH * KW, "EB": co * KH * KW, "WG": n * yh * yw}[pat]
    bound = terms * 128 * 128 + (2**31 if f["acc"] else 0)
    dt = np.float64 if bound < _EXACT_F64 else np.int64
    A = A.astype(dt).reshape(a_shape)
    B = B.astype(dt).reshape(b_shape)

    rows = [_tap_span(yh, f["yh0"], sh, ph, k, f["xh0"], xh) for k in range(KH)]
    cols = [_tap_span(yw, f["yw0"], sw, pw, k, f["xw0"], xw) for k in range(KW)]

    if pat == "FP":
        X, W = A, B
        acc = np.zeros((co, n, yh, yw), dtype=dt)           # transposed to [n,co,..] below
        for i in range(KH):
            if rows[i] is None:
                continue
            ry, rx = rows[i]
            for j in range(KW):
                if cols[j] is None:
                    continue
                cy, cx = cols[j]
                acc[:, :, ry, cy] += np.tensordot(W[:, :, i, j], X[:, :, rx, cx], axes=([1], [1]))
        res = acc.transpose(1, 0, 2, 3)
    elif pat == "EB":
        dY, W = A, B
        acc = np.zeros((ci, n, xh, xw), dtype=dt)
        for i in range(KH):
            if rows[i] is None:
                continue
            ry, rx = rows[i]
            for j in range(KW):
                if cols[j] is None:
                    continue
                cy, cx = cols[j]
                # distinct (ry, cy) map to distinct (rx, cx) within one tap: no collisions
                acc[:, :, rx, cx] += np.tensordot(W[:, :, i, j], dY[:, :, ry, cy], axes=([0], [1]))
        res = acc.transpose(1, 0, 2, 3)
    else:  # WG
        dY, X = A, B
        res = np.zeros((co, ci, KH, KW), dtype=dt)
        for i in range(KH):
            if rows[i] is None:
                continue
            ry, rx = rows[i]
            for j in range(KW):
                if cols[j] is None:
                    continue
                cy, cx = cols[j]
                res[:, :, i, j] = np.tensordot(dY[:, :, ry, cy], X[:, :, rx, cx],
                                               axes=([0, 2, 3], [0, 2, 3]))
    res = res.astype(np.int64).reshape(-1)
    cbuf = m.bufs["ABUF"]
    c0 = f["caddr"]
    if f["acc"]:
        res = res + cbuf[c0:c0 + c_n].astype(np.int64)
    bad = np.abs(res) > INT32_MAX
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        el = tuple(int(e) for e in np.unravel_index(k, c_shape))
        raise Trap(f"accumulator overflow: C{list(el)} = {int(res[k])} leaves int32 "
                   f"[-(2**31-1), 2**31-1] (pattern {pat}, acc={f['acc']}, ABUF {c0 + k})")
    cbuf[c0:c0 + c_n] = res
    m.counters["macs"] += n * yh * yw * KH * KW * ci * co
    a, b = (ci, co) if pat == "FP" else (co, ci)
    t = m.target
    return n * yh * yw * KH * KW * -(-a // t.mac_rows) * -(-b // t.mac_cols)
