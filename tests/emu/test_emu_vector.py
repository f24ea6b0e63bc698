"""RQ, VMASK, MAXP, MAXPB, RSUM, LOSSG, SGD against element-by-element references."""
import math

import numpy as np
import pytest

from test_emu_util import (ABUF, DDR, IBUF, TARGET, WBUF, dense_strides, ld, rand32_py,
                           rshift_py, run, sat_py)


def _load_abuf(d, arr, addr=0):
    a = d.put(np.asarray(arr).reshape(-1), "i32")
    n = int(np.asarray(arr).size)
    return ("LD", ld(ABUF, addr, a, (1, 1, 1, n), (0, 0, 0, 1), esize=4))


def _load_i8(d, arr, buf, addr=0):
    a = d.put(np.asarray(arr).reshape(-1))
    n = int(np.asarray(arr).size)
    return ("LD", ld(buf, addr, a, (1, 1, 1, n), (0, 0, 0, 1)))


@pytest.mark.parametrize("mode,shift,lo,hi", [(0, 7, -127, 127), (0, 0, 0, 127),
                                              (0, -2, -127, 127), (1, 9, -127, 127),
                                              (1, 3, 0, 127), (1, 31, -127, 127),
                                              (0, 4, -20, 35), (1, 5, -3, -3),
                                              (0, 6, 5, 5), (1, 2, -127, -100)])
def test_rq(mode, shift, lo, hi):
    rng = np.random.default_rng(shift + 100 + 40 * mode + lo + 3 * hi + 1000)
    full = (2, 3, 4, 5)
    tile, off = (2, 2, 3, 5), (0, 1, 1, 0)
    v = rng.integers(-2**20, 2**20, tile).astype(np.int32)
    v.reshape(-1)[:4] = [2**31 - 1, -(2**31 - 1), 64, -64]
    seed, tid = 0x12345678, 777
    g = dense_strides(full)
    gbase = sum(o * s for o, s in zip(off, g))
    d = DDR()
    sa = d.put(np.array([seed], np.uint32).view(np.int32), "i32")
    prog = [("SEED", dict(ddr=sa)), _load_abuf(d, v, 10),
            ("RQ", dict(saddr=10, dbuf=IBUF, daddr=3, n0=2, n1=2, n2=3, n3=5, shift=shift,
                        mode=mode, lo=lo, hi=hi, tid=tid, gbase=gbase, g0=g[0], g1=g[1],
                        g2=g[2], g3=g[3]))]
    m = run(prog, d)
    got = m.ibuf[3:3 + v.size].reshape(tile)
    for i in np.ndindex(*tile):
        idx = gbase + sum(a * b for a, b in zip(i, g))
        r = rand32_py(seed, tid, idx)
        q = sat_py(rshift_py(int(v[i]), shift, ("nearest", "stochastic")[mode], r))
        q = min(max(q, lo), hi)
        assert got[i] == q, i
    if (lo, hi) != (-127, 127) and lo != hi:      # the clamp really bit on both sides
        assert got.min() == lo and got.max() == hi
    assert m.counters["RQ"] == 1
    assert m.counters["cycles_vector"] == 4 + -(-v.size // TARGET.vector_lanes) + 1  # + END


def test_rq_stochastic_independent_of_tiling():
    """Two half tiles with the right gbase give the same bits as one whole tile."""
    rng = np.random.default_rng(3)
    v = rng.integers(-5000, 5000, (4, 6)).astype(np.int32)
    d = DDR()
    prog = [_load_abuf(d, v, 0),
            ("RQ", dict(saddr=0, dbuf=IBUF, daddr=0, n0=1, n1=1, n2=4, n3=6, shift=6, mode=1,
                        lo=-127, hi=127, tid=5, gbase=0, g2=6, g3=1)),
            ("RQ", dict(saddr=0, dbuf=IBUF, daddr=100, n0=1, n1=1, n2=2, n3=6, shift=6, mode=1,
                        lo=-127, hi=127, tid=5, gbase=0, g2=6, g3=1)),
            ("RQ", dict(saddr=12, dbuf=IBUF, daddr=112, n0=1, n1=1, n2=2, n3=6, shift=6, mode=1,
                        lo=-127, hi=127, tid=5, gbase=12, g2=6, g3=1)),
            ("RQ", dict(saddr=0, dbuf=ABUF, daddr=200, n0=1, n1=1, n2=4, n3=6, shift=6, mode=1,
                        lo=-127, hi=127, tid=6, gbase=0, g2=6, g3=1))]
    m = run(prog, d)
    np.testing.assert_array_equal(m.ibuf[:24], m.ibuf[100:124])
    assert not np.array_equal(m.ibuf[:24], m.abuf[200:224])   # another tid, other bits


def test_vmask():
    rng = np.random.default_rng(4)
    a = rng.integers(-127, 128, 50).astype(np.int8)
    b = rng.integers(-3, 4, 50).astype(np.int8)
    d = DDR()
    m = run([_load_i8(d, a, IBUF, 0), _load_i8(d, b, WBUF, 7),
             ("VMASK", dict(abuf=IBUF, aaddr=0, bbuf=WBUF, baddr=7, dbuf=IBUF, daddr=60,
                            count=50, lo=0, hi=128)),
             ("VMASK", dict(abuf=IBUF, aaddr=0, bbuf=IBUF, baddr=0, dbuf=IBUF, daddr=120,
                            count=50, lo=0, hi=128))], d)
    assert [int(x) for x in m.ibuf[60:110]] == [int(a[i]) if b[i] > 0 else 0 for i in range(50)]
    assert [int(x) for x in m.ibuf[120:170]] == [max(int(x), 0) for x in a]


def _pool_ref(x, k, s, p):
    P, h, w = x.shape
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    y = np.zeros((P, oh, ow), np.int64)
    arg = {}
    for pl in range(P):
        for i in range(oh):
            for j in range(ow):
                best, pos = None, None
                for a in range(k):
                    for b in range(k):
                        r, c = i * s - p + a, j * s - p + b
                        if 0 <= r < h and 0 <= c < w and (best is None or x[pl, r, c] > best):
                            best, pos = int(x[pl, r, c]), (pl, r, c)
                y[pl, i, j] = best
                arg[(pl, i, j)] = pos
    return y, arg


@pytest.mark.parametrize("k,s,p", [(3, 2, 1), (2, 2, 0), (3, 1, 1)])
def test_maxp_and_maxpb(k, s, p):
    rng = np.random.default_rng(k * 10 + s + p)
    P, h, w = 3, 7, 6
    x = rng.integers(-3, 3, (P, h, w)).astype(np.int8)       # many ties
    y, arg = _pool_ref(x, k, s, p)
    dy = rng.integers(-127, 128, y.shape).astype(np.int8)
    geom = dict(planes=P, h=h, w=w, kh=k, kw=k, sh=s, sw=s, ph=p, pw=p)
    d = DDR()
    m = run([_load_i8(d, x, IBUF, 0), _load_i8(d, dy, WBUF, 0),
             ("MAXP", dict(sbuf=IBUF, saddr=0, dbuf=IBUF, daddr=500, **geom)),
             ("MAXPB", dict(xbuf=IBUF, xaddr=0, gbuf=WBUF, gaddr=0, dbuf=WBUF, daddr=1000,
                            **geom))], d)
    np.testing.assert_array_equal(m.ibuf[500:500 + y.size].reshape(y.shape), y)
    dx = np.zeros(x.shape, np.int64)
    for key, pos in arg.items():
        dx[pos] += int(dy[key])
    dx = np.clip(dx, -127, 127)
    np.testing.assert_array_equal(m.wbuf[1000:1000 + x.size].reshape(x.shape), dx)
    if k > s:   # overlapping windows really did accumulate and saturate somewhere
        assert np.abs(dx).max() >= 100


def test_rsum_acc():
    rng = np.random.default_rng(6)
    s = rng.integers(-127, 128, (3, 4, 10)).astype(np.int8)
    d = DDR()
    m = run([_load_i8(d, s, IBUF, 0), _load_abuf(d, [5, -5, 2**30, 0], 8),
             ("RSUM", dict(sbuf=IBUF, saddr=0, daddr=0, n=3, c=4, hw=10, acc=0)),
             ("RSUM", dict(sbuf=IBUF, saddr=0, daddr=8, n=3, c=4, hw=10, acc=1))], d)
    ref = [sum(int(s[n, c, i]) for n in range(3) for i in range(10)) for c in range(4)]
    assert list(m.abuf[:4]) == ref
    assert list(m.abuf[8:12]) == [r + b for r, b in zip(ref, [5, -5, 2**30, 0])]


def test_lossg():
    N, K, e_z = 4, 10, -4
    rng = np.random.default_rng(8)
    z = rng.integers(-127, 128, (N, K)).astype(np.int8)
    z[1] = 5                                                   # all equal
    z[2, 3] = 127
    z[2, 4] = -127                                             # max - z = 254
    lab = np.array([0, 9, 4, 3], np.int32)
    lut = [round(2**15 * math.exp(-dd * 2**e_z)) for dd in range(256)]
    rmul = round(2**16 / N)
    e_dz = -7 - math.ceil(math.log2(N))
    shift = 31 + e_dz
    d = DDR()
    m = run([_load_i8(d, z, IBUF, 0), _load_abuf(d, lab, 0), _load_abuf(d, lut, 100),
             ("LOSSG", dict(zbuf=IBUF, zaddr=0, laddr=0, lutaddr=100, dbuf=IBUF, daddr=64,
                            n=N, k=K, rmul=rmul, shift=shift))], d)
    got = m.ibuf[64:64 + N * K].reshape(N, K)
    for n in range(N):
        mx = max(int(v) for v in z[n])
        E = [lut[mx - int(v)] for v in z[n]]
        S = sum(E)
        for k in range(K):
            P = (E[k] * 2**15) // S
            G = P - 2**15 * (k == lab[n])
            assert got[n, k] == sat_py(rshift_py(G * rmul, shift, "nearest")), (n, k)
    assert got[1, 9] < 0 and got[1, 0] > 0


@pytest.mark.parametrize("cshift,cbits,dbuf,lrshift", [(16, 8, WBUF, 16), (8, 24, ABUF, 16),
                                                        (16, 8, IBUF, 23), (16, 8, WBUF, 0)])
def test_sgd(cshift, cbits, dbuf, lrshift):
    rng = np.random.default_rng(cshift)
    n = 40
    bound = (2**(cbits - 1) - 1) << cshift
    M = rng.integers(-bound, bound, n).astype(np.int64)
    M[:3] = [bound, -bound, bound - 5]
    G = rng.integers(-127, 128, n).astype(np.int8)
    G[:3] = [-127, 127, -100]
    lrmul = -123457 if cshift == 16 else 3_000_000
    if lrshift == 0:
        lrmul = 3
    d = DDR()
    m = run([_load_abuf(d, M, 0), _load_i8(d, G, IBUF, 5),
             ("SGD", dict(maddr=0, gbuf=IBUF, gaddr=5, dbuf=dbuf, daddr=200, count=n,
                          lrmul=lrmul, lrshift=lrshift, cshift=cshift, cbits=cbits))], d)
    dst = m.bufs[("IBUF", "WBUF", "ABUF")[dbuf]]
    for i in range(n):
        Mn = min(max(int(M[i]) - rshift_py(int(G[i]) * lrmul, lrshift, "nearest"), -bound), bound)
        assert m.abuf[i] == Mn, i
        assert dst[200 + i] == rshift_py(Mn, cshift, "nearest"), i
    assert m.counters["SGD"] == 1


def test_lossg_exact_floor_with_custom_table():
    """S = 2**17 makes every P exact: P = E / 4, so an off-by-one divisor is caught."""
    lut = [0] * 256
    lut[0], lut[1], lut[7] = 2**15, 2**16 - 100, 100       # S = 2**17
    z = np.array([[7, 7, 6, 0]], np.int8)
    d = DDR()
    m = run([_load_i8(d, z, IBUF, 0), _load_abuf(d, [0], 0), _load_abuf(d, lut, 100),
             ("LOSSG", dict(zbuf=IBUF, zaddr=0, laddr=0, lutaddr=100, dbuf=ABUF, daddr=500,
                            n=1, k=4, rmul=1, shift=0))], d)
    # P = [8192, 8192, 16359, 25]; G0 = P0 - 2**15; D = sat8(G)
    assert list(m.abuf[500:504]) == [-127, 127, 127, 25]


@pytest.mark.parametrize("mode", [0, 1])
def test_vmulc_channel_broadcast_product_and_plane_dot(mode):
    """VMULC mode 0: A[p, i] * B[p]; mode 1: sum_i A[p, i] * B[p, i]; int8 extremes."""
    rng = np.random.default_rng(50 + mode)
    P, HW = 5, 7
    A = rng.integers(-127, 128, (P, HW)).astype(np.int8)
    B = rng.integers(-127, 128, (P,) if mode == 0 else (P, HW)).astype(np.int8)
    A[0, :] = -127
    B.reshape(-1)[0] = -127
    d = DDR()
    prog = [_load_i8(d, A, IBUF, 4), _load_i8(d, B, WBUF, 9),
            ("VMULC", dict(mode=mode, abuf=IBUF, aaddr=4, bbuf=WBUF, baddr=9, caddr=3,
                           planes=P, hw=HW))]
    m = run(prog, d)
    n = P * HW if mode == 0 else P
    got = m.bufs["ABUF"][3:3 + n]
    for p in range(P):
        for i in range(HW):
            if mode == 0:
                assert got[p * HW + i] == int(A[p, i]) * int(B[p]), (p, i)
        if mode == 1:
            assert got[p] == sum(int(A[p, i]) * int(B[p, i]) for i in range(HW)), p
    if mode == 0:
        assert got[0] == 127 * 127                  # the largest product
    assert m.counters["cycles_vector"] == 4 + -(-(P * HW) // TARGET.vector_lanes) + 1


def test_vmulc_traps_on_an_accumulator_buffer_operand():
    d = DDR()
    prog = [("VMULC", dict(mode=0, abuf=ABUF, aaddr=0, bbuf=WBUF, baddr=0, caddr=0,
                           planes=1, hw=4))]
    with pytest.raises(Exception, match="VMULC reads int8 tiles"):
        run(prog, d)
