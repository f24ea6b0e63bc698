"""MAC: tiled convolution on the MAC array (patterns FP, EB, WG), int8 x int8 -> int32.

Geometry (global coordinates): output/error row y (global) and kernel row kh touch X row
g = y*sh - ph + kh.  Y tile row r is global row yh0 + r, X tile row r is global row
xh0 + r; a term whose X element lies outside the X tile contributes 0.  Columns alike.

Grouped convolution (field g): the group axis is split out of the channel axes and every
tap (kh, kw) is one batched matmul over the groups on whole tiles (BLAS float64 where the
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


def _cols(T, rx, cx):
    """[n, g, c, h, w] tile -> its tap window as [g, c, n*h'*w'] (a copy)."""
    t = T[:, :, :, rx, cx]
    return t.transpose(1, 2, 0, 3, 4).reshape(t.shape[1], t.shape[2], -1), t.shape


def op_mac(m, f):
    if f["pattern"] >= len(PATTERNS):
        raise Trap(f"field pattern={f['pattern']} is not FP/EB/WG")
    pat = PATTERNS[f["pattern"]]
    nonzero(f, "n", "ci", "co", "xh", "xw", "yh", "yw", "kh", "kw", "sh", "sw", "g")
    n, ci, co, G = f["n"], f["ci"], f["co"], f["g"]
    xh, xw, yh, yw = f["xh"], f["xw"], f["yh"], f["yw"]
    KH, KW, sh, sw, ph, pw = f["kh"], f["kw"], f["sh"], f["sw"], f["ph"], f["pw"]
    abuf, bbuf = buf_name(f["abuf"], "abuf"), buf_name(f["bbuf"], "bbuf")
    for nm, b in (("abuf", abuf), ("bbuf", bbuf)):
        if b not in INT8_BUFS:
            raise Trap(f"field {nm}={b}: MAC operands must be int8 (IBUF or WBUF)")
    # flat tile shapes (as stored) and grouped views (group axis split out)
    xs, ys, ws = (n, G * ci, xh, xw), (n, G * co, yh, yw), (G * co, ci, KH, KW)
    xg, yg, wg = (n, G, ci, xh, xw), (n, G, co, yh, yw), (G, co, ci, KH, KW)
    a_shape, b_shape, c_shape = {"FP": (xs, ws, ys), "EB": (ys, ws, xs),
                                 "WG": (ys, xs, ws)}[pat]
    a_g, b_g = {"FP": (xg, wg), "EB": (yg, wg), "WG": (yg, xg)}[pat]
    a_n, b_n, c_n = (int(np.prod(s)) for s in (a_shape, b_shape, c_shape))
    check_range(m, "ABUF", f["caddr"], c_n, f"MAC {pat} C tile {list(c_shape)} at caddr")
    A = read_buf(m, abuf, f["aaddr"], a_n, f"MAC {pat} A tile {list(a_shape)} at aaddr")
    B = read_buf(m, bbuf, f["baddr"], b_n, f"MAC {pat} B tile {list(b_shape)} at baddr")

    # Bound on |C| (int8 operands may hold -128): products per output (one group) * 2**14.
    terms = {"FP": ci * KH * KW, "EB": co * KH * KW, "WG": n * yh * yw}[pat]
    bound = terms * 128 * 128 + (2**31 if f["acc"] else 0)
    dt = np.float64 if bound < _EXACT_F64 else np.int64
    A = A.astype(dt).reshape(a_g)
    B = B.astype(dt).reshape(b_g)

    rows = [_tap_span(yh, f["yh0"], sh, ph, k, f["xh0"], xh) for k in range(KH)]
    cols = [_tap_span(yw, f["yw0"], sw, pw, k, f["xw0"], xw) for k in range(KW)]
    taps = [(i, j) for i in range(KH) if rows[i] is not None
            for j in range(KW) if cols[j] is not None]

    # Every tap is one batched matmul over the group axis: [g, p, q] @ [g, q, r].
    if pat == "FP":
        X, W = A, B
        acc = np.zeros((G, co, n, yh, yw), dtype=dt)        # -> [n, g, co, ..] below
        for i, j in taps:
            (ry, rx), (cy, cx) = rows[i], cols[j]
            x2, (_, _, _, th, tw) = _cols(X, rx, cx)         # [g, ci, n*th*tw]
            acc[:, :, :, ry, cy] += np.matmul(W[:, :, :, i, j], x2).reshape(G, co, n, th, tw)
        res = acc.transpose(2, 0, 1, 3, 4)
    elif pat == "EB":
        dY, W = A, B
        acc = np.zeros((G, ci, n, xh, xw), dtype=dt)
        for i, j in taps:
            (ry, rx), (cy, cx) = rows[i], cols[j]
            d2, (_, _, _, th, tw) = _cols(dY, ry, cy)        # [g, co, n*th*tw]
            # distinct (ry, cy) map to distinct (rx, cx) within one tap: no collisions
            acc[:, :, :, rx, cx] += np.matmul(W[:, :, :, i, j].transpose(0, 2, 1),
                                              d2).reshape(G, ci, n, th, tw)
        res = acc.transpose(2, 0, 1, 3, 4)
    else:  # WG
        dY, X = A, B
        res = np.zeros((G, co, ci, KH, KW), dtype=dt)
        for i, j in taps:
            (ry, rx), (cy, cx) = rows[i], cols[j]
            d2, _ = _cols(dY, ry, cy)                        # [g, co, P]
            x2, _ = _cols(X, rx, cx)                         # [g, ci, P]
            res[:, :, :, i, j] = np.matmul(d2, x2.transpose(0, 2, 1))
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
    m.counters["macs"] += n * yh * yw * KH * KW * ci * co * G
    a, b = (ci, co) if pat == "FP" else (co, ci)
    t = m.target
    return G * n * yh * yw * KH * KW * -(-a // t.mac_rows) * -(-b // t.mac_cols)
