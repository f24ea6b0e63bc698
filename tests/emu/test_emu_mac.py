"""MAC FP / EB / WG on tiles at global offsets, against naive whole-tensor loops."""
import numpy as np
import pytest

from test_emu_util import (ABUF, DDR, IBUF, TARGET, WBUF, conv_eb_py, conv_fwd_py,
                           conv_wg_py, ddr_read, dense_strides, ld, run)

N, C, O, H, Wd, K = 2, 3, 4, 9, 8, 3


def _geom(sh, ph):
    OH = (H + 2 * ph - K) // sh + 1
    OW = (Wd + 2 * ph - K) // sh + 1
    return OH, OW


def _x_span(y0, y1, sh, ph, lim):
    """X rows touched by Y rows [y0, y1)."""
    return max(0, y0 * sh - ph), min(lim, (y1 - 1) * sh - ph + K)


def _y_span(a, b, sh, ph, lim):
    """Y rows that touch X rows [a, b)."""
    lo = max(0, -(-(a - K + 1 + ph) // sh))
    hi = min(lim, (b - 1 + ph) // sh + 1)
    return lo, hi


def _data(seed):
    rng = np.random.default_rng(seed)
    X = rng.integers(-127, 128, (N, C, H, Wd)).astype(np.int8)
    W = rng.integers(-127, 128, (O, C, K, K)).astype(np.int8)
    return rng, X, W


def _box(base, esize, full_shape, tile_off, tile_shape, buf, baddr):
    st = dense_strides(full_shape)
    off = sum(o * s for o, s in zip(tile_off, st))
    return ld(buf, baddr, base + esize * off, tile_shape, st, esize=esize)


def _mac(pattern, **f):
    d = dict(pattern=("FP", "EB", "WG").index(pattern), acc=0, abuf=IBUF, aaddr=0,
             bbuf=WBUF, baddr=0, caddr=0, kh=K, kw=K, g=1)
    d.update(f)
    return ("MAC", d)


@pytest.mark.parametrize("sh,ph", [(2, 1), (1, 1), (1, 0)])
@pytest.mark.parametrize("split", [1, 2])
def test_fp_tiles(sh, ph, split):
    rng, X, W = _data(10 + sh + ph)
    OH, OW = _geom(sh, ph)
    d = DDR()
    aX, aW = d.put(X), d.put(W)
    aY = d.reserve(4 * N * O * OH * OW)
    prog = [("LD", _box(aW, 1, W.shape, (0, 0, 0, 0), W.shape, WBUF, 0))]
    ycuts = np.linspace(0, OH, split + 1).astype(int)
    xcuts = np.linspace(0, OW, split + 1).astype(int)
    for y0, y1 in zip(ycuts[:-1], ycuts[1:]):
        for x0, x1 in zip(xcuts[:-1], xcuts[1:]):
            a, b = _x_span(y0, y1, sh, ph, H)
            c, e = _x_span(x0, x1, sh, ph, Wd)
            prog.append(("LD", _box(aX, 1, X.shape, (0, 0, a, c), (N, C, b - a, e - c), IBUF, 0)))
            prog.append(_mac("FP", n=N, ci=C, co=O, xh=b - a, xw=e - c, yh=y1 - y0, yw=x1 - x0,
                             sh=sh, sw=sh, ph=ph, pw=ph, xh0=a, xw0=c, yh0=y0, yw0=x0))
            prog.append(("ST", _box(aY, 4, (N, O, OH, OW), (0, 0, y0, x0),
                                    (N, O, y1 - y0, x1 - x0), ABUF, 0)))
    m = run(prog, d)
    np.testing.assert_array_equal(ddr_read(m, aY, (N, O, OH, OW), "i32"),
                                  conv_fwd_py(X, W, sh, sh, ph, ph))
    assert m.counters["macs"] == N * OH * OW * K * K * C * O


def test_fp_tiles_equal_single_tile_and_cycles():
    """Two row tiles with halos give the same ABUF contents as one whole tile."""
    _, X, W = _data(5)
    sh, ph = 2, 1
    OH, OW = _geom(sh, ph)
    d = DDR()
    aX, aW = d.put(X), d.put(W)
    whole = [("LD", _box(aW, 1, W.shape, (0,) * 4, W.shape, WBUF, 0)),
             ("LD", _box(aX, 1, X.shape, (0,) * 4, X.shape, IBUF, 0)),
             _mac("FP", n=N, ci=C, co=O, xh=H, xw=Wd, yh=OH, yw=OW, sh=sh, sw=sh, ph=ph, pw=ph)]
    m1 = run(whole, d)
    ref = m1.abuf[:N * O * OH * OW].reshape(N, O, OH, OW).copy()
    # cycles: one MAC pass per output pixel * tap * ceil(C/rows) * ceil(O/cols)
    mac_cyc = N * OH * OW * K * K * -(-C // TARGET.mac_rows) * -(-O // TARGET.mac_cols)
    assert m1.counters["cycles_mac"] == mac_cyc
    y_mid = 2
    parts = []
    for (y0, y1) in [(0, y_mid), (y_mid, OH)]:
        a, b = _x_span(y0, y1, sh, ph, H)
        prog = [("LD", _box(aW, 1, W.shape, (0,) * 4, W.shape, WBUF, 0)),
                ("LD", _box(aX, 1, X.shape, (0, 0, a, 0), (N, C, b - a, Wd), IBUF, 0)),
                _mac("FP", n=N, ci=C, co=O, xh=b - a, xw=Wd, yh=y1 - y0, yw=OW, sh=sh, sw=sh,
                     ph=ph, pw=ph, xh0=a, yh0=y0)]
        m = run(prog, d)
        parts.append(m.abuf[:N * O * (y1 - y0) * OW].reshape(N, O, y1 - y0, OW))
    np.testing.assert_array_equal(np.concatenate(parts, axis=2), ref)


@pytest.mark.parametrize("sh,ph", [(2, 1), (1, 1)])
def test_eb_tiles(sh, ph):
    rng, X, W = _data(20 + sh)
    OH, OW = _geom(sh, ph)
    dY = rng.integers(-127, 128, (N, O, OH, OW)).astype(np.int8)
    d = DDR()
    aD, aW = d.put(dY), d.put(W)
    aX = d.reserve(4 * N * C * H * Wd)
    prog = [("LD", _box(aW, 1, W.shape, (0,) * 4, W.shape, WBUF, 0))]
    for a, b in [(0, 4), (4, 5), (5, H)]:
        for c, e in [(0, 3), (3, Wd)]:
            y0, y1 = _y_span(a, b, sh, ph, OH)
            x0, x1 = _y_span(c, e, sh, ph, OW)
            prog.append(("LD", _box(aD, 1, dY.shape, (0, 0, y0, x0), (N, O, y1 - y0, x1 - x0),
                                    IBUF, 0)))
            prog.append(_mac("EB", n=N, ci=C, co=O, xh=b - a, xw=e - c, yh=y1 - y0, yw=x1 - x0,
                             sh=sh, sw=sh, ph=ph, pw=ph, xh0=a, xw0=c, yh0=y0, yw0=x0))
            prog.append(("ST", _box(aX, 4, (N, C, H, Wd), (0, 0, a, c), (N, C, b - a, e - c),
                                    ABUF, 0)))
    m = run(prog, d)
    np.testing.assert_array_equal(ddr_read(m, aX, (N, C, H, Wd), "i32"),
                                  conv_eb_py(dY, W, H, Wd, sh, sh, ph, ph))


def test_eb_whole_dy_drops_terms_outside_x_tile():
    rng, X, W = _data(31)
    sh, ph = 2, 1
    OH, OW = _geom(sh, ph)
    dY = rng.integers(-127, 128, (N, O, OH, OW)).astype(np.int8)
    d = DDR()
    aD, aW = d.put(dY), d.put(W)
    a, b = 3, 6
    prog = [("LD", _box(aW, 1, W.shape, (0,) * 4, W.shape, WBUF, 0)),
            ("LD", _box(aD, 1, dY.shape, (0,) * 4, dY.shape, IBUF, 0)),
            _mac("EB", n=N, ci=C, co=O, xh=b - a, xw=Wd, yh=OH, yw=OW, sh=sh, sw=sh, ph=ph,
                 pw=ph, xh0=a)]
    m = run(prog, d)
    ref = conv_eb_py(dY, W, H, Wd, sh, sh, ph, ph)[:, :, a:b]
    np.testing.assert_array_equal(m.abuf[:ref.size].reshape(ref.shape), ref)


@pytest.mark.parametrize("sh,ph", [(2, 1), (1, 1)])
def test_wg_tiles_accumulate(sh, ph):
    rng, X, W = _data(40 + sh)
    OH, OW = _geom(sh, ph)
    dY = rng.integers(-127, 128, (N, O, OH, OW)).astype(np.int8)
    d = DDR()
    aD, aX = d.put(dY), d.put(X)
    aW = d.reserve(4 * W.size)
    prog = []
    cuts = [(0, 1), (1, 3), (3, OH)]
    for t, (y0, y1) in enumerate(cuts):
        a, b = _x_span(y0, y1, sh, ph, H)
        b = min(H, b + 1)                      # an X tile larger than needed is fine
        prog.append(("LD", _box(aD, 1, dY.shape, (0, 0, y0, 0), (N, O, y1 - y0, OW), IBUF, 0)))
        prog.append(("LD", _box(aX, 1, X.shape, (0, 0, a, 0), (N, C, b - a, Wd), WBUF, 0)))
        prog.append(_mac("WG", acc=int(t > 0), abuf=IBUF, bbuf=WBUF, n=N, ci=C, co=O,
                         xh=b - a, xw=Wd, yh=y1 - y0, yw=OW, sh=sh, sw=sh, ph=ph, pw=ph,
                         xh0=a, yh0=y0))
    prog.append(("ST", _box(aW, 4, W.shape, (0,) * 4, W.shape, ABUF, 0)))
    m = run(prog, d)
    np.testing.assert_array_equal(ddr_read(m, aW, W.shape, "i32"),
                                  conv_wg_py(dY, X, K, K, sh, sh, ph, ph))


def test_linear_as_1x1_and_acc():
    rng = np.random.default_rng(7)
    x = rng.integers(-127, 128, (5, 20)).astype(np.int8)
    w = rng.integers(-127, 128, (3, 20)).astype(np.int8)
    d = DDR()
    ax, aw = d.put(x), d.put(w)
    prog = [("LD", ld(IBUF, 0, ax, (5, 20, 1, 1), (20, 1, 0, 0))),
            ("LD", ld(WBUF, 0, aw, (3, 20, 1, 1), (20, 1, 0, 0))),
            _mac("FP", n=5, ci=20, co=3, xh=1, xw=1, yh=1, yw=1, kh=1, kw=1, sh=1, sw=1),
            _mac("FP", acc=1, n=5, ci=20, co=3, xh=1, xw=1, yh=1, yw=1, kh=1, kw=1, sh=1, sw=1)]
    m = run(prog, d)
    ref = 2 * (x.astype(np.int64) @ w.T.astype(np.int64))
    np.testing.assert_array_equal(m.abuf[:15].reshape(5, 3), ref)
