"""MAC: tiled convolution on the MAC array (patterns FP, EB, WG), int8 x int8 -> int32.

Geometry (global coordinates): output/error row y (global) and kernel row kh touch X row
g = y*sh - ph + kh.  Y tile row r is global row yh0 + r, X tile row r is global row
xh0 + r; a term whose X element lies outside the X tile contributes 0.  Columns alike.

Paths (`op_mac`; the choice depends on the tile geometry alone):
- pointwise: 1x1 kernel, stride 1, ci = co = 1, X tile = Y tile region (BatchNorm as a
  grouped conv): integer products per group, summed over images and pixels for WG.
- window (FP, WG, EB at stride 1): the X tile (EB: dY, with the kernel flipped) is
  converted once into a zero-padded channels-last copy covering every row and column the
  taps touch; the im2col window [g, (image, Y row, Y column), (kh, kw, c)] is a strided
  view of it (contiguous runs of kw*c elements), copied and used in one batched matmul.
- taps of Q (EB at stride > 1): Q = dY^T W for every tap in one matmul; each tap's slice
  is added onto the X rows and columns it lands on (strided), the X tile is cut out.
- by taps: tiles whose window would be huge (giant kernels over tiny tiles) run one
  batched matmul per kernel tap on the in-tile slices (`_by_taps`), in bounded memory,
  in the summing dtype itself.
Products are summed in float32 (BLAS) where the bound on |sum| stays below 2**24 -- every
partial sum is then an exact integer, in any order.  Larger sums run float32 matmuls over
chunks of the summed axis that each stay below that bound, adding the chunks' exact
integer results in float64 where the whole bound stays below 2**53, else in int64.  With
acc=1, C is added in int32 when its values leave room for the bound, else in float64
(int64) and checked: overflow traps exactly as docs/numerics.md says.
"""
from __future__ import annotations

import math
from functools import lru_cache
from operator import itemgetter
from typing import NamedTuple

import numpy as np

from edgec.isa.machine import mac_count
from edgec.isa.table import BUFFERS, PATTERNS

from .numerics import INT32_MAX
from .state import INT8_BUFS, Trap, buf_name, check_range, nonzero, read_buf

_EXACT_F32 = 2**24                # sums of integers below these are exact in the float
_EXACT_F64 = 2**53
_WINDOW_MAX = 1 << 22             # im2col matrices up to this many entries (else per tap)
_PRODUCT = 128 * 128              # bound on |int8 * int8| (int8 operands may hold -128)
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
    window: int              # entries of the larger of the window and its padded source
    pointwise: bool          # 1x1, stride 1, ci = co = 1, X tile = Y tile region


def _key(f) -> tuple:
    """(pattern, n, ci, co, g, xh, xw, yh, yw, kh, kw, sh, sw, base_h, base_w): base_h =
    yh0*sh - ph - xh0 is the X tile row of Y tile row 0 at kernel row 0 (base_w alike)."""
    return _SHAPE(f) + (f["yh0"] * f["sh"] - f["ph"] - f["xh0"],
                        f["yw0"] * f["sw"] - f["pw"] - f["xw0"])


@lru_cache(maxsize=4096)
def _plan(key: tuple) -> MacPlan | None:
    """None where the word is malformed (`_check` says how)."""
    pat_i, n, ci, co, G, xh, xw, yh, yw, KH, KW, sh, sw, bh, bw = key
    if pat_i >= len(PATTERNS) or 0 in key[1:13]:
        return None
    pat = PATTERNS[pat_i]
    xs, ys, ws = (n, G * ci, xh, xw), (n, G * co, yh, yw), (G * co, ci, KH, KW)
    a_shape, b_shape, c_shape = {"FP": (xs, ws, ys), "EB": (ys, ws, xs),
                                 "WG": (ys, xs, ws)}[pat]
    terms = {"FP": ci * KH * KW, "EB": co * KH * KW, "WG": n * yh * yw}[pat]
    pointwise = (ci == co == KH == KW == sh == sw == 1 and bh == bw == 0
                 and (xh, xw) == (yh, yw))
    return MacPlan(pat, a_shape, b_shape, c_shape,
                   *(math.prod(s) for s in (a_shape, b_shape, c_shape)), terms,
                   _entries(_as_fp(key) if pat == "EB" and sh == sw == 1 else key), pointwise)


def _entries(key: tuple) -> int:
    """Entries of the larger of the window and its padded copy (`_window`)."""
    _, n, ci, co, G, xh, xw, yh, yw, KH, KW, sh, sw = key[:13]
    return G * n * ci * max(yh * yw * KH * KW, (KH + sh * (yh - 1)) * (KW + sw * (yw - 1)))


def _as_fp(key: tuple) -> tuple:
    """The key of EB at stride 1 as an FP over dY with the flipped kernel: X row r and
    flipped kernel row k read dY row r + k + 1 - kh - base_h (columns alike)."""
    _, n, ci, co, G, xh, xw, yh, yw, KH, KW, _, _, bh, bw = key
    return (0, n, co, ci, G, yh, yw, xh, xw, KH, KW, 1, 1, 1 - KH - bh, 1 - KW - bw)


class Window(NamedTuple):
    """The tap windows of an [n, g*c, h, w] tile as a strided view of a zero-padded copy.

    The copy is channels-last, [g, image, rows, columns, c]: padded row t holds tile row
    base_h + t, so Y row y and kernel row kh read padded row y*sh + kh (columns alike);
    the window [g, image, Y row, Y column, kh, kw, c] is then a view whose innermost
    (kw, c) run is contiguous.  EB accumulates onto the same padded layout.
    """
    pad: tuple               # shape of the padded copy
    tile: tuple | None       # (rows, columns) slices of the tile inside it, None if none
    inner: tuple             # the same elements' (rows, columns) slices of the copy
    shape: tuple             # the window's shape
    steps: tuple             # its strides, in elements of the copy


def _overlap(size: int, base: int, n_tile: int):
    """(tile slice, padded slice) of tile indices base + t for t in [0, size), or None."""
    lo, hi = max(base, 0), min(base + size, n_tile)
    return (slice(lo, hi), slice(lo - base, hi - base)) if lo < hi else None


@lru_cache(maxsize=4096)
def _window(key: tuple) -> Window:
    _, n, ci, co, G, xh, xw, yh, yw, KH, KW, sh, sw, bh, bw = key
    rows, cols = KH + sh * (yh - 1), KW + sw * (yw - 1)
    r, q = _overlap(rows, bh, xh), _overlap(cols, bw, xw)
    tile = inner = None
    if r is not None and q is not None:
        tile, inner = (r[0], q[0]), (r[1], q[1])
    st = (n * rows * cols * ci, rows * cols * ci, cols * ci, ci, 1)
    return Window((G, n, rows, cols, ci), tile, inner, (G, n, yh, yw, KH, KW, ci),
                  (st[0], st[1], sh * st[2], sw * st[3], st[2], st[3], 1))


_TAPS_OUTER = (0, 4, 5, 6, 1, 2, 3)   # window axes (g, kh, kw, c, n, y, x): its own inverse


def _tap_windows(T, key: tuple, dt) -> np.ndarray:
    """The X tile T's tap windows as [g, (image, Y row, Y column), (kh, kw, c)] in dt.

    The copy's innermost axis is the longer of the runs kw*c and Y columns (few channels,
    e.g. depthwise): the result is then a transposed view of it."""
    n, ci, G, xh, xw = key[1], key[2], key[4], key[5], key[6]
    w = _window(key)
    pad = np.zeros(w.pad, dtype=dt)
    if w.tile is not None:
        (tr, tc), (pr, pc) = w.tile, w.inner
        x = T.reshape(n, G, ci, xh, xw)[:, :, :, tr, tc]
        pad[:, :, pr, pc, :] = x.transpose(1, 0, 3, 4, 2)
    view = np.ndarray(w.shape, dt, pad, 0, [s * pad.itemsize for s in w.steps])
    _, _, yh, yw, KH, KW, _ = w.shape
    if yw > KW * ci:
        win = np.ascontiguousarray(view.transpose(_TAPS_OUTER)).transpose(_TAPS_OUTER)
    else:
        win = np.ascontiguousarray(view)
    return win.reshape(G, n * yh * yw, KH * KW * ci)          # a view of win


def _weights(w: np.ndarray, dt) -> np.ndarray:
    """Weights [g, out, in, kh, kw] as [g, out, (kh, kw, in)] in dt."""
    return np.ascontiguousarray(w.transpose(0, 1, 3, 4, 2), dtype=dt).reshape(*w.shape[:2], -1)


def _w5(B, key: tuple) -> np.ndarray:
    """The [g*co, ci, kh, kw] W tile as [g, co, ci, kh, kw]."""
    return B.reshape(key[4], key[3], key[2], key[9], key[10])


def _grouped(T, key: tuple, c: int, dt) -> np.ndarray:
    """An [n, g*c, h, w] tile as [g, c, (image, h, w)] in dt."""
    n, G = key[1], key[4]
    t = T.reshape(n, G * c, -1)
    if n > 1:
        t = t.transpose(1, 0, 2)
    return np.ascontiguousarray(t, dtype=dt).reshape(G, c, -1)


def _images_first(res: np.ndarray, n: int) -> np.ndarray:
    """[g, c, (image, h, w)] -> flat [image, g, c, h, w]."""
    if n > 1:
        res = res.reshape(res.shape[0], res.shape[1], n, -1).transpose(2, 0, 1, 3)
    return res.reshape(-1)


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
    """The cheapest dtype in which sums of `terms` int8 products are exact."""
    bound = terms * _PRODUCT
    if bound < _EXACT_F32:
        return np.float32                # C, if acc, is added in float64 afterwards
    if bound + (2**31 if acc else 0) < _EXACT_F64:
        return np.float64
    return np.int64


def _operand_dtype(dt):
    """float32 where float32 sums of some products are exact (`_exact_matmul` then sums
    chunks of them in dt), else dt itself.  With the real bounds always float32; the
    tests lower _EXACT_F32 to force the wider paths, and then get dt."""
    return np.float32 if _EXACT_F32 > _PRODUCT else dt


def _exact_matmul(a: np.ndarray, b: np.ndarray, dt) -> np.ndarray:
    """a @ b, shared axis K (a's last, b's next to last), every sum exact, in dt.

    Operands of dtype dt: one matmul.  float32 operands with a wider dt: one float32
    matmul per chunk of K small enough that its sums stay below _EXACT_F32 (exact), the
    chunks' exact integer results added in dt (exact by `_dtype`)."""
    if a.dtype == dt:
        return np.matmul(a, b)
    most, K = (_EXACT_F32 - 1) // _PRODUCT, a.shape[-1]
    step = -(-K // -(-K // most))                 # K in equal chunks of at most `most`
    res = np.matmul(a[..., :step], b[..., :step, :]).astype(dt)
    for k in range(step, K, step):
        res += np.matmul(a[..., k:k + step], b[..., k:k + step, :]).astype(dt)
    return res


def _pointwise(p: MacPlan, A, B) -> np.ndarray:
    """1x1, ci = co = 1 (a per-group scale, e.g. BatchNorm): integer products, no matmul."""
    n, G = p.a_shape[:2]
    a = A.reshape(n, G, -1)
    if p.pat != "WG":        # Y = w[g] * X, dX = w[g] * dY
        return (a * B.astype(np.int32).reshape(G, 1)).reshape(-1)
    return (a * B.reshape(a.shape).astype(np.int32)).sum(axis=(0, 2), dtype=np.int64)


def _fp(key, A, B, dt) -> np.ndarray:
    """Y, images first, from the X tile A and the W tile B."""
    return _conv(key, A, _w5(B, key), dt)


def _conv(key, A, w, dt) -> np.ndarray:
    """Y[g, co, (n, y, x)] = W[g, co, (kh, kw, ci)] @ Xwin^T, images first; w is W as
    [g, co, ci, kh, kw]."""
    odt = _operand_dtype(dt)
    win = _tap_windows(A, key, odt)
    return _images_first(_exact_matmul(_weights(w, odt), win.transpose(0, 2, 1), dt), key[1])


def _wg(key, A, B, dt) -> np.ndarray:
    """dW[g, co, (kh, kw, ci)] = dY[g, co, (n, y, x)] @ Xwin, as [g*co, ci, kh, kw]."""
    _, n, ci, co, G, xh, xw, yh, yw, KH, KW = key[:11]
    odt = _operand_dtype(dt)
    res = _exact_matmul(_grouped(A, key, co, odt), _tap_windows(B, key, odt), dt)
    return res.reshape(G, co, KH, KW, ci).transpose(0, 1, 4, 2, 3).reshape(-1)


def _eb(key, A, B, dt) -> np.ndarray:
    """At stride 1 the FP of the flipped kernel over dY; else Q[g, (n, y, x), (kh, kw, ci)]
    = dY^T @ W, each tap's slice added where it lands.

    Q's taps add onto a zero [g, image, rows, columns, ci] array laid out like the padded
    copy of `_tap_windows` (row t is X tile row base_h + t: tap kh of Y row y lands on row
    y*sh + kh), whose part inside the X tile is dX."""
    _, n, ci, co, G, xh, xw, yh, yw, KH, KW, sh, sw = key[:13]
    w = _w5(B, key)
    if sh == sw == 1:
        return _conv(_as_fp(key), A, w.transpose(0, 2, 1, 3, 4)[:, :, :, ::-1, ::-1], dt)
    odt = _operand_dtype(dt)
    dy = _grouped(A, key, co, odt).transpose(0, 2, 1)             # [g, (n, y, x), co]
    q = _exact_matmul(dy, _weights(w, odt), dt).reshape(G, n, yh, yw, KH, KW, ci)
    win = _window(key)
    acc = np.zeros(win.pad, dtype=dt)
    for i in range(KH):
        rows = slice(i, i + sh * (yh - 1) + 1, sh)
        for j in range(KW):
            acc[:, :, rows, j:j + sw * (yw - 1) + 1:sw] += q[:, :, :, :, i, j]
    dx = np.zeros((n, G, ci, xh, xw), dtype=dt)
    if win.tile is not None:
        (tr, tc), (pr, pc) = win.tile, win.inner
        dx[:, :, :, tr, tc] = acc[:, :, pr, pc].transpose(1, 0, 4, 2, 3)
    return dx.reshape(-1)


_WINDOWED = {"FP": _fp, "EB": _eb, "WG": _wg}


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


def product(f, key: tuple, p: MacPlan, A, B) -> np.ndarray:
    """The exact products of one MAC word summed into its C tile (flat, as stored), from
    the A and B tiles (flat int8), in the cheapest exact dtype (`_dtype` of its terms and
    acc): the path depends on the tile geometry alone."""
    dt = _dtype(p.terms, f["acc"])
    if p.pointwise:
        return _pointwise(p, A, B)
    if p.window <= _WINDOW_MAX:
        return _WINDOWED[p.pat](key, A, B, dt)
    return _by_taps(f, p, A, B, dt)


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
    res = product(f, key, p, A, B)
    cs = m.bufs["ABUF"][c0:c0 + p.c_n]
    room = INT32_MAX - p.terms * _PRODUCT         # |products| <= terms * 2**14
    if not f["acc"]:
        if room < 0:
            _fits_int32(res, p, f, c0)
        cs[...] = res
    elif room >= 0 and np.maximum.reduce(cs) <= room and np.minimum.reduce(cs) >= -room:
        cs += res.astype(np.int32)                 # exact, and provably inside int32
    else:
        res = np.add(res, cs, dtype=np.float64 if res.dtype.kind == "f" else np.int64)
        _fits_int32(res, p, f, c0)
        cs[...] = res
    m.counters["macs"] += mac_count(f)
