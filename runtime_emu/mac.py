"""MAC: tiled convolution on the MAC array (patterns FP, EB, WG), int8 x int8 -> int32.

Geometry (global coordinates): output/error row y (global) and kernel row kh touch X row
g = y*sh - ph + kh.  Y tile row r is global row yh0 + r, X tile row r is global row
xh0 + r; a term whose X element lies outside the X tile contributes 0.  Columns alike.

A MAC is ONE batched matmul over the group axis on whole tiles (im2col): a gather index,
built once per tile geometry and cached, lays the tap windows of one operand out as a
[g, terms, columns] matrix; out-of-tile elements read a zero appended to the operand.
Tiles whose window matrix would be huge (giant kernels over tiny tiles) run one batched
matmul per kernel tap on the in-tile slices instead (`_by_taps`), in bounded memory.
EB first forms Q = W^T dY for every tap (one matmul), then sums the taps landing on each
X element with a second gather.  Products are summed in float32 (BLAS) where the bound on
|sum| stays below 2**24, in float64 where it stays below 2**53 -- every partial sum is
then an exact integer, in any order -- and in int64 otherwise.  With acc=1, C is added in
int32 when its values leave room for the bound, else in float64 (int64) and checked:
overflow traps exactly as docs/numerics.md says.
"""
from __future__ import annotations

import math
from functools import lru_cache
from operator import itemgetter
from typing import NamedTuple

import numpy as np

from edgec.isa.table import BUFFERS, PATTERNS

from .numerics import INT32_MAX
from .state import INT8_BUFS, Trap, buf_name, check_range, nonzero, read_buf

_EXACT_F32 = 2**24                # sums of integers below these are exact in the float
_EXACT_F64 = 2**53
_WINDOW_MAX = 1 << 22             # im2col matrices up to this many entries (else per tap)
_INDEX_BUDGET = 1 << 25           # entries kept in the cache of im2col gather indices
_NONZERO = ("n", "ci", "co", "xh", "xw", "yh", "yw", "kh", "kw", "sh", "sw", "g")
_SHAPE = itemgetter("pattern", "n", "ci", "co", "g", "xh", "xw", "yh", "yw",
                    "kh", "kw", "sh", "sw")


class MacPlan(NamedTuple):
    """What a MAC word's work depends on, from its tile geometry alone."""
    pat: str
    a_shape: tuple           # the A, B and C tiles as stored
    b_shape: tuple
    c_shape: tuple
    a_n: int                 # their elements
    b_n: int
    c_n: int
    terms: int               # products summed into one C element (one group)
    window: int              # entries of the im2col window matrix


def _key(f) -> tuple:
    """(pattern, n, ci, co, g, xh, xw, yh, yw, kh, kw, sh, sw, base_h, base_w): base_h =
    yh0*sh - ph - xh0 is the X tile row of Y tile row 0 at kernel row 0 (base_w alike)."""
    return _SHAPE(f) + (f["yh0"] * f["sh"] - f["ph"] - f["xh0"],
                        f["yw0"] * f["sw"] - f["pw"] - f["xw0"])


@lru_cache(maxsize=4096)
def _plan(key: tuple) -> MacPlan | None:
    """None where the word is malformed (`_check` says how)."""
    pat_i, n, ci, co, G, xh, xw, yh, yw, KH, KW = key[:11]
    if pat_i >= len(PATTERNS) or 0 in key[1:13]:
        return None
    pat = PATTERNS[pat_i]
    xs, ys, ws = (n, G * ci, xh, xw), (n, G * co, yh, yw), (G * co, ci, KH, KW)
    a_shape, b_shape, c_shape = {"FP": (xs, ws, ys), "EB": (ys, ws, xs),
                                 "WG": (ys, xs, ws)}[pat]
    terms = {"FP": ci * KH * KW, "EB": co * KH * KW, "WG": n * yh * yw}[pat]
    window = G * KH * KW * ci * n * (max(xh * xw, yh * yw) if pat == "EB" else yh * yw)
    return MacPlan(pat, a_shape, b_shape, c_shape,
                   *(math.prod(s) for s in (a_shape, b_shape, c_shape)), terms, window)


_INDEX: dict[tuple, np.ndarray] = {}


def _window_index(key: tuple, p: MacPlan) -> np.ndarray:
    """Gather index of the window matrix into a zero-extended array (cached).

    FP, WG: the X window of (group, c, kh, kw) x (image, Y row, Y column) in X, WG
    transposed; EB: for (kh, kw) x (group, c, image, X row, X column), the element of
    Q[g, (c, kh, kw), (image, Y row, Y column)] = W^T dY whose tap lands there, if any.
    """
    idx = _INDEX.get(key)
    if idx is not None:
        return idx
    _, n, ci, co, G, xh, xw, yh, yw, KH, KW, sh, sw, bh, bw = key
    ar = np.arange

    def at(v, *axes):        # v's axes placed at `axes` of a 7-d array
        shape = [1] * 7
        for a, d in zip(axes, v.shape):
            shape[a] = d
        return v.reshape(shape)
    if p.pat == "EB":        # dims (kh, kw, g, c, n, X row, X column) -> Q[g, c, kh, kw, Y]
        ynum = ar(xh)[None, :] - bh - ar(KH)[:, None]                 # [KH, xh]
        xnum = ar(xw)[None, :] - bw - ar(KW)[:, None]                 # [KW, xw]
        yv = (ynum % sh == 0) & (ynum >= 0) & (ynum < yh * sh)
        xv = (xnum % sw == 0) & (xnum >= 0) & (xnum < yw * sw)
        flat = (((((at(ar(G), 2) * ci + at(ar(ci), 3)) * KH + at(ar(KH), 0)) * KW
                  + at(ar(KW), 1)) * n + at(ar(n), 4)) * yh * yw
                + at(ynum // sh, 0, 5) * yw + at(xnum // sw, 1, 6))
        valid = at(yv, 0, 5) & at(xv, 1, 6)
        idx = np.where(valid, flat, G * ci * KH * KW * n * yh * yw)
        idx = idx.reshape(KH * KW, G, ci, n * xh * xw)
    else:                    # dims (g, c, kh, kw, n, Y row, Y column)
        r = bh + ar(KH)[:, None] + sh * ar(yh)[None, :]                # [KH, yh]
        q = bw + ar(KW)[:, None] + sw * ar(yw)[None, :]                # [KW, yw]
        flat = ((((at(ar(n), 4) * G + at(ar(G), 0)) * ci + at(ar(ci), 1)) * xh
                 + at(r, 2, 5)) * xw + at(q, 3, 6))
        valid = at((r >= 0) & (r < xh), 2, 5) & at((q >= 0) & (q < xw), 3, 6)
        x_n = p.a_n if p.pat == "FP" else p.b_n
        idx = np.where(valid, flat, x_n).reshape(G, ci * KH * KW, n * yh * yw)
        if p.pat == "WG":
            idx = idx.transpose(0, 2, 1)
    idx = np.ascontiguousarray(idx, dtype=np.intp)
    idx.flags.writeable = False
    while _INDEX and sum(v.size for v in _INDEX.values()) + idx.size > _INDEX_BUDGET:
        del _INDEX[next(iter(_INDEX))]                                # oldest first
    _INDEX[key] = idx
    return idx


def _check(m, f) -> None:
    """Every validity check of a MAC word, in order; raises the first fault's Trap."""
    if f["pattern"] >= len(PATTERNS):
        raise Trap(f"field pattern={f['pattern']} is not FP/EB/WG")
    pat = PATTERNS[f["pattern"]]
    nonzero(f, *_NONZERO)
    abuf, bbuf = buf_name(f["abuf"], "abuf"), buf_name(f["bbuf"], "bbuf")
    for nm, b in (("abuf", abuf), ("bbuf", bbuf)):
        if b not in INT8_BUFS:
            raise Trap(f"field {nm}={b}: MAC operands must be int8 (IBUF or WBUF)")
    p = _plan(_key(f))
    check_range(m, "ABUF", f["caddr"], p.c_n, f"MAC {pat} C tile {list(p.c_shape)} at caddr")
    read_buf(m, abuf, f["aaddr"], p.a_n, f"MAC {pat} A tile {list(p.a_shape)} at aaddr")
    read_buf(m, bbuf, f["baddr"], p.b_n, f"MAC {pat} B tile {list(p.b_shape)} at baddr")


def _dtype(terms: int, acc: int):
    """The cheapest dtype whose matmul is exact for `terms` int8 products per sum."""
    bound = terms * 128 * 128            # int8 operands may hold -128
    if bound < _EXACT_F32:
        return np.float32                # C, if acc, is added in float64 afterwards
    if bound + (2**31 if acc else 0) < _EXACT_F64:
        return np.float64
    return np.int64


def _extended(v: np.ndarray, dt) -> np.ndarray:
    """`v` converted to dt with one zero appended (what out-of-tile taps read)."""
    e = np.zeros(v.size + 1, dtype=dt)
    e[:-1] = v
    return e


def _im2col(key, p: MacPlan, A, B, dt) -> np.ndarray:
    """C (flat, as stored) as one batched matmul on the window matrix."""
    _, n, ci, co, G, xh, xw, yh, yw, KH, KW = key[:11]
    idx = _window_index(key, p)
    if p.pat == "FP":       # Y[g, co, (n, y, x)] = W[g, co, (c, kh, kw)] @ Xwin
        res = np.matmul(B.astype(dt).reshape(G, co, ci * KH * KW), _extended(A, dt)[idx])
    else:
        dy = A.astype(dt).reshape(n, G * co, yh * yw)
        if n > 1:
            dy = dy.transpose(1, 0, 2)
        dy = dy.reshape(G, co, n * yh * yw)
        if p.pat == "WG":   # dW[g, co, (c, kh, kw)] = dY[g, co, (n, y, x)] @ Xwin^T
            return np.matmul(dy, _extended(B, dt)[idx]).reshape(-1)
        # EB: Q[g, (c, kh, kw), (n, y, x)] = W^T @ dY; dX = sum over taps of Q's windows
        q = np.zeros(G * ci * KH * KW * n * yh * yw + 1, dtype=dt)
        w = B.astype(dt).reshape(G, co, ci * KH * KW).transpose(0, 2, 1)
        np.matmul(w, dy, out=q[:-1].reshape(G, ci * KH * KW, n * yh * yw))
        res = q[idx].sum(axis=0)
    if n > 1:               # [g, o, (n, hw)] -> [n, g, o, hw]
        res = res.reshape(G, res.shape[1], n, -1).transpose(2, 0, 1, 3)
    return res.reshape(-1)


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


def _by_taps(f, p: MacPlan, A, B, dt) -> np.ndarray:
    """C (flat, as stored) as one batched matmul per kernel tap on the in-tile slices."""
    n, ci, co, G = f["n"], f["ci"], f["co"], f["g"]
    xh, xw, yh, yw, KH, KW = f["xh"], f["xw"], f["yh"], f["yw"], f["kh"], f["kw"]
    xg, yg, wg = (n, G, ci, xh, xw), (n, G, co, yh, yw), (G, co, ci, KH, KW)
    a_g, b_g = {"FP": (xg, wg), "EB": (yg, wg), "WG": (yg, xg)}[p.pat]
    A = A.astype(dt).reshape(a_g)
    B = B.astype(dt).reshape(b_g)
    rows = [_tap_span(yh, f["yh0"], f["sh"], f["ph"], k, f["xh0"], xh) for k in range(KH)]
    cols = [_tap_span(yw, f["yw0"], f["sw"], f["pw"], k, f["xw0"], xw) for k in range(KW)]
    taps = [(i, j) for i in range(KH) if rows[i] is not None
            for j in range(KW) if cols[j] is not None]
    if p.pat == "FP":
        X, W = A, B
        acc = np.zeros((G, co, n, yh, yw), dtype=dt)        # -> [n, g, co, ..] below
        for i, j in taps:
            (ry, rx), (cy, cx) = rows[i], cols[j]
            x2, (_, _, _, th, tw) = _cols(X, rx, cx)         # [g, ci, n*th*tw]
            acc[:, :, :, ry, cy] += np.matmul(W[:, :, :, i, j], x2).reshape(G, co, n, th, tw)
        res = acc.transpose(2, 0, 1, 3, 4)
    elif p.pat == "EB":
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
    return res.reshape(-1)


def _fits_int32(res: np.ndarray, p: MacPlan, f, c0: int) -> None:
    """Trap on the first element of the C tile `res` that leaves int32."""
    if np.maximum.reduce(res) > INT32_MAX or np.minimum.reduce(res) < -INT32_MAX:
        k = int(np.flatnonzero(np.abs(res) > INT32_MAX)[0])
        el = tuple(int(e) for e in np.unravel_index(k, p.c_shape))
        raise Trap(f"accumulator overflow: C{list(el)} = {int(res[k])} leaves int32 "
                   f"[-(2**31-1), 2**31-1] (pattern {p.pat}, acc={f['acc']}, ABUF {c0 + k})")


def op_mac(m, f):
    key = _key(f)
    p = _plan(key)
    ab, bb, c0 = f["abuf"], f["bbuf"], f["caddr"]
    if (p is None or ab > 1 or bb > 1 or c0 + p.c_n > m.bufs["ABUF"].size
            or f["aaddr"] + p.a_n > m.bufs[BUFFERS[ab]].size
            or f["baddr"] + p.b_n > m.bufs[BUFFERS[bb]].size):
        _check(m, f)
        raise AssertionError("MAC: the fast checks and _check disagree")
    A = m.bufs[BUFFERS[ab]][f["aaddr"]:f["aaddr"] + p.a_n]
    B = m.bufs[BUFFERS[bb]][f["baddr"]:f["baddr"] + p.b_n]
    dt = _dtype(p.terms, f["acc"])
    if p.window <= _WINDOW_MAX:
        res = _im2col(key, p, A, B, dt)
    else:
        res = _by_taps(f, p, A, B, dt)
    cs = m.bufs["ABUF"][c0:c0 + p.c_n]
    room = INT32_MAX - p.terms * 128 * 128         # |products| <= terms * 2**14
    if not f["acc"]:
        if room < 0:
            _fits_int32(res, p, f, c0)
        cs[...] = res
    elif room >= 0 and np.maximum.reduce(cs) <= room and np.minimum.reduce(cs) >= -room:
        cs += res.astype(np.int32)                 # exact, and provably inside int32
    else:
        res = np.add(res, cs, dtype=np.int64 if dt is np.int64 else np.float64)   # exact
        _fits_int32(res, p, f, c0)
        cs[...] = res
    n, ci, co, G = f["n"], f["ci"], f["co"], f["g"]
    yh, yw, KH, KW = f["yh"], f["yw"], f["kh"], f["kw"]
    m.counters["macs"] += n * yh * yw * KH * KW * ci * co * G
    a, b = (ci, co) if p.pat == "FP" else (co, ci)
    t = m.target
    return n * yh * yw * KH * KW * t.mac_group_passes(a, b, G)
