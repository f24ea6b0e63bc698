"""Grouped MAC (field g): FP / EB / WG tiles, split over rows, columns and groups, against
brute-force grouped-convolution loops written here (docs/numerics.md section 4)."""
import numpy as np
import pytest

import edgec.runtime_emu.mac as emu_mac

from test_emu_util import ABUF, DDR, IBUF, TARGET, WBUF, ddr_read, dense_strides, ld, run

N, H, Wd, K = 2, 7, 6, 3

# (groups, ci per group, co per group): ordinary, grouped, and depthwise (ci = co = 1)
GROUPINGS = [(1, 3, 2), (2, 2, 3), (4, 1, 2), (4, 3, 1), (6, 1, 1)]


@pytest.fixture(params=["float32", "float64", "int64", "float32-by-taps", "int64-by-taps"])
def exact_path(request, monkeypatch):
    """Run each test on the BLAS float32 and float64 paths and on the exact int64 path,
    as one im2col matmul and as one matmul per kernel tap (the path of huge windows)."""
    if not request.param.startswith("float32"):
        monkeypatch.setattr(emu_mac, "_EXACT_F32", 0)
    if request.param.startswith("int64"):
        monkeypatch.setattr(emu_mac, "_EXACT_F64", 0)
    if request.param.endswith("by-taps"):
        monkeypatch.setattr(emu_mac, "_WINDOW_MAX", 0)
    return request.param


# ------------------------------------------------------------------ brute-force references
def fwd_ref(X, W, g, sh, sw, ph, pw):
    n_, C, h, w = X.shape
    O, ci, kh, kw = W.shape
    co = O // g
    OH, OW = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    Y = np.zeros((n_, O, OH, OW), np.int64)
    for n in range(n_):
        for o in range(O):
            j = o // co
            for y in range(OH):
                for x in range(OW):
                    s = 0
                    for c in range(ci):
                        for a in range(kh):
                            for b in range(kw):
                                r, q = y * sh - ph + a, x * sw - pw + b
                                if 0 <= r < h and 0 <= q < w:
                                    s += int(X[n, j * ci + c, r, q]) * int(W[o, c, a, b])
                    Y[n, o, y, x] = s
    return Y


def eb_ref(dY, W, g, h, w, sh, sw, ph, pw):
    n_, O, OH, OW = dY.shape
    _, ci, kh, kw = W.shape
    co = O // g
    dX = np.zeros((n_, g * ci, h, w), np.int64)
    for n in range(n_):
        for o in range(O):
            j = o // co
            for y in range(OH):
                for x in range(OW):
                    for c in range(ci):
                        for a in range(kh):
                            for b in range(kw):
                                r, q = y * sh - ph + a, x * sw - pw + b
                                if 0 <= r < h and 0 <= q < w:
                                    dX[n, j * ci + c, r, q] += int(dY[n, o, y, x]) * int(W[o, c, a, b])
    return dX


def wg_ref(dY, X, g, kh, kw, sh, sw, ph, pw):
    n_, O, OH, OW = dY.shape
    _, C, h, w = X.shape
    ci, co = C // g, O // g
    dW = np.zeros((O, ci, kh, kw), np.int64)
    for o in range(O):
        j = o // co
        for c in range(ci):
            for a in range(kh):
                for b in range(kw):
                    s = 0
                    for n in range(n_):
                        for y in range(OH):
                            for x in range(OW):
                                r, q = y * sh - ph + a, x * sw - pw + b
                                if 0 <= r < h and 0 <= q < w:
                                    s += int(dY[n, o, y, x]) * int(X[n, j * ci + c, r, q])
                    dW[o, c, a, b] = s
    return dW


# ------------------------------------------------------------------ tiling helpers
def _out(h, s, p):
    return (h + 2 * p - K) // s + 1


def _x_span(y0, y1, s, p, lim):
    """X rows touched by Y rows [y0, y1)."""
    return max(0, y0 * s - p), min(lim, (y1 - 1) * s - p + K)


def _y_span(a, b, s, p, lim):
    """Y rows that touch X rows [a, b)."""
    return max(0, -(-(a - K + 1 + p) // s)), min(lim, (b - 1 + p) // s + 1)


def _box(base, esize, full, off, shape, buf, baddr=0):
    st = dense_strides(full)
    return ld(buf, baddr, base + esize * sum(o * s for o, s in zip(off, st)), shape, st,
              esize=esize)


def _group_cuts(g):
    return [(0, g)] if g == 1 else [(0, g // 2), (g // 2, g)]


def _mac(pat, **f):
    d = dict(pattern=("FP", "EB", "WG").index(pat), acc=0, abuf=IBUF, aaddr=0, bbuf=WBUF,
             baddr=0, caddr=0, kh=K, kw=K)
    d.update(f)
    return ("MAC", d)


def _data(seed, g, ci, co, s, p):
    rng = np.random.default_rng(seed)
    X = rng.integers(-128, 128, (N, g * ci, H, Wd)).astype(np.int8)
    W = rng.integers(-128, 128, (g * co, ci, K, K)).astype(np.int8)
    dY = rng.integers(-128, 128, (N, g * co, _out(H, s, p), _out(Wd, s, p))).astype(np.int8)
    return X, W, dY


# ------------------------------------------------------------------ tests
@pytest.mark.parametrize("g,ci,co", GROUPINGS)
@pytest.mark.parametrize("s,p", [(1, 1), (2, 1), (1, 0)])
def test_grouped_fp_tiles(g, ci, co, s, p, exact_path):
    X, W, _ = _data(g * 100 + ci * 10 + co + s + 7 * p, g, ci, co, s, p)
    OH, OW = _out(H, s, p), _out(Wd, s, p)
    d = DDR()
    aX, aW = d.put(X), d.put(W)
    aY = d.reserve(4 * N * g * co * OH * OW)
    prog = []
    for j0, j1 in _group_cuts(g):
        gg = j1 - j0
        prog.append(("LD", _box(aW, 1, W.shape, (j0 * co, 0, 0, 0), (gg * co, ci, K, K), WBUF)))
        for y0, y1 in [(0, OH // 2), (OH // 2, OH)]:
            for x0, x1 in [(0, 1), (1, OW)]:
                a, b = _x_span(y0, y1, s, p, H)
                c, e = _x_span(x0, x1, s, p, Wd)
                prog += [
                    ("LD", _box(aX, 1, X.shape, (0, j0 * ci, a, c), (N, gg * ci, b - a, e - c),
                                IBUF)),
                    _mac("FP", n=N, ci=ci, co=co, g=gg, xh=b - a, xw=e - c, yh=y1 - y0,
                         yw=x1 - x0, sh=s, sw=s, ph=p, pw=p, xh0=a, xw0=c, yh0=y0, yw0=x0),
                    ("ST", _box(aY, 4, (N, g * co, OH, OW), (0, j0 * co, y0, x0),
                                (N, gg * co, y1 - y0, x1 - x0), ABUF))]
    m = run(prog, d)
    np.testing.assert_array_equal(ddr_read(m, aY, (N, g * co, OH, OW), "i32"),
                                  fwd_ref(X, W, g, s, s, p, p))
    assert m.counters["macs"] == N * OH * OW * K * K * ci * co * g


@pytest.mark.parametrize("g,ci,co", GROUPINGS)
@pytest.mark.parametrize("s,p", [(1, 1), (2, 1)])
def test_grouped_eb_tiles(g, ci, co, s, p, exact_path):
    _, W, dY = _data(g * 200 + ci * 10 + co + s, g, ci, co, s, p)
    OH, OW = dY.shape[2:]
    d = DDR()
    aD, aW = d.put(dY), d.put(W)
    aX = d.reserve(4 * N * g * ci * H * Wd)
    prog = []
    for j0, j1 in _group_cuts(g):
        gg = j1 - j0
        prog.append(("LD", _box(aW, 1, W.shape, (j0 * co, 0, 0, 0), (gg * co, ci, K, K), WBUF)))
        for a, b in [(0, 3), (3, 4), (4, H)]:
            for c, e in [(0, 4), (4, Wd)]:
                y0, y1 = _y_span(a, b, s, p, OH)
                x0, x1 = _y_span(c, e, s, p, OW)
                prog += [
                    ("LD", _box(aD, 1, dY.shape, (0, j0 * co, y0, x0),
                                (N, gg * co, y1 - y0, x1 - x0), IBUF)),
                    _mac("EB", n=N, ci=ci, co=co, g=gg, xh=b - a, xw=e - c, yh=y1 - y0,
                         yw=x1 - x0, sh=s, sw=s, ph=p, pw=p, xh0=a, xw0=c, yh0=y0, yw0=x0),
                    ("ST", _box(aX, 4, (N, g * ci, H, Wd), (0, j0 * ci, a, c),
                                (N, gg * ci, b - a, e - c), ABUF))]
    m = run(prog, d)
    np.testing.assert_array_equal(ddr_read(m, aX, (N, g * ci, H, Wd), "i32"),
                                  eb_ref(dY, W, g, H, Wd, s, s, p, p))


@pytest.mark.parametrize("g,ci,co", GROUPINGS)
@pytest.mark.parametrize("s,p", [(1, 1), (2, 1)])
def test_grouped_wg_tiles_accumulate(g, ci, co, s, p, exact_path):
    X, W, dY = _data(g * 300 + ci * 10 + co + s, g, ci, co, s, p)
    OH, OW = dY.shape[2:]
    d = DDR()
    aD, aX = d.put(dY), d.put(X)
    aW = d.reserve(4 * W.size)
    prog = []
    for j0, j1 in _group_cuts(g):
        gg = j1 - j0
        for t, (y0, y1) in enumerate([(0, 1), (1, 3), (3, OH)]):
            a, b = _x_span(y0, y1, s, p, H)
            b = min(H, b + 1)                  # an X tile larger than needed is fine
            prog += [
                ("LD", _box(aD, 1, dY.shape, (0, j0 * co, y0, 0), (N, gg * co, y1 - y0, OW),
                            IBUF)),
                ("LD", _box(aX, 1, X.shape, (0, j0 * ci, a, 0), (N, gg * ci, b - a, Wd), WBUF)),
                _mac("WG", acc=int(t > 0), n=N, ci=ci, co=co, g=gg, xh=b - a, xw=Wd,
                     yh=y1 - y0, yw=OW, sh=s, sw=s, ph=p, pw=p, xh0=a, yh0=y0)]
        prog.append(("ST", _box(aW, 4, W.shape, (j0 * co, 0, 0, 0), (gg * co, ci, K, K), ABUF)))
    m = run(prog, d)
    np.testing.assert_array_equal(ddr_read(m, aW, W.shape, "i32"),
                                  wg_ref(dY, X, g, K, K, s, s, p, p))


@pytest.mark.parametrize("pat", ["FP", "EB", "WG"])
def test_grouped_counters_and_group_isolation(pat):
    """One whole-tile MAC: macs and cycles scale with g; a group never sees another's data."""
    g, ci, co, s, p = 4, 2, 3, 1, 1
    X, W, dY = _data(77, g, ci, co, s, p)
    OH, OW = dY.shape[2:]
    # zero everything of group 2 in the first operand: only group 2's result may vanish
    if pat == "FP":
        X[:, 2 * ci:3 * ci] = 0
    else:
        dY[:, 2 * co:3 * co] = 0
    d = DDR()
    aX, aW, aD = d.put(X), d.put(W), d.put(dY)
    A, B = {"FP": ((aX, X), (aW, W)), "EB": ((aD, dY), (aW, W)), "WG": ((aD, dY), (aX, X))}[pat]
    prog = [("LD", _box(A[0], 1, A[1].shape, (0,) * 4, A[1].shape, IBUF)),
            ("LD", _box(B[0], 1, B[1].shape, (0,) * 4, B[1].shape, WBUF)),
            _mac(pat, n=N, ci=ci, co=co, g=g, xh=H, xw=Wd, yh=OH, yw=OW, sh=s, sw=s, ph=p,
                 pw=p)]
    m = run(prog, d)
    ref = {"FP": lambda: fwd_ref(X, W, g, s, s, p, p),
           "EB": lambda: eb_ref(dY, W, g, H, Wd, s, s, p, p),
           "WG": lambda: wg_ref(dY, X, g, K, K, s, s, p, p)}[pat]()
    np.testing.assert_array_equal(m.abuf[:ref.size].reshape(ref.shape), ref)
    lo, hi = (2 * ci, 3 * ci) if pat == "EB" else (2 * co, 3 * co)
    z = ref[lo:hi] if pat == "WG" else ref[:, lo:hi]
    assert not z.any() and np.count_nonzero(ref) > ref.size // 2
    assert m.counters["macs"] == N * OH * OW * K * K * ci * co * g
    a, b = (ci, co) if pat == "FP" else (co, ci)
    per_group = N * OH * OW * K * K * -(-a // TARGET.mac_rows) * -(-b // TARGET.mac_cols)
    side_by_side = max(1, min(TARGET.mac_rows // a, TARGET.mac_cols // b))   # packed groups
    assert m.counters["cycles_mac"] == -(-g // side_by_side) * per_group


def test_depthwise_1x1_is_a_per_channel_scale():
    """BatchNorm lowering shape: depthwise 1x1 (ci = co = 1, g = C) scales each channel."""
    C = 5
    rng = np.random.default_rng(9)
    X = rng.integers(-127, 128, (3, C, 4, 4)).astype(np.int8)
    w = rng.integers(-127, 128, (C, 1, 1, 1)).astype(np.int8)
    d = DDR()
    aX, aW = d.put(X), d.put(w)
    m = run([("LD", _box(aX, 1, X.shape, (0,) * 4, X.shape, IBUF)),
             ("LD", _box(aW, 1, w.shape, (0,) * 4, w.shape, WBUF)),
             _mac("FP", n=3, ci=1, co=1, g=C, xh=4, xw=4, yh=4, yw=4, kh=1, kw=1, sh=1, sw=1)],
            d)
    ref = [[[[int(X[n, c, i, j]) * int(w[c, 0, 0, 0]) for j in range(4)] for i in range(4)]
            for c in range(C)] for n in range(3)]
    assert m.abuf[:X.size].reshape(X.shape).tolist() == ref
