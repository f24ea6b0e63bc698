"""Dynamic fixed point in the emulator (docs/numerics.md section 8, isa/table.py): XBUF,
the dyn / st / ng fields of RQ, VADD, SGD, LOSSG, LOSST, and EXPUPD, against
element-by-element pure-Python readings of the spec text."""
import math

import numpy as np
import pytest

from edgec.isa.errors import TrapError
from edgec.isa.table import XBUF_WORDS

from test_emu_util import (ABUF, DDR, IBUF, TARGET, WBUF, dense_strides, ddr_read, ld,
                           rand32_py, rshift_py, run, sat_py)

XBUF = 3
LANES = TARGET.vector_lanes


# ---------------------------------------------------------------- program pieces
def _vec(d, arr, buf, addr=0):
    """LD of a flat array into `buf` at `addr` (int8 for IBUF/WBUF, int32 otherwise)."""
    arr = np.asarray(arr).reshape(-1)
    wide = buf in (ABUF, XBUF)
    a = d.put(arr, "i32" if wide else "i8")
    return ("LD", ld(buf, addr, a, (1, 1, 1, arr.size), (0, 0, 0, 1), esize=4 if wide else 1))


def _xtab(d, words, addr=0):
    return _vec(d, np.asarray(words, np.int64), XBUF, addr)


def _trap(instrs, d=None):
    with pytest.raises(TrapError) as ei:
        run(instrs, d)
    return ei.value


# ---------------------------------------------------------------- pure-Python references
def _int8_result(r, lo, hi):
    return min(max(sat_py(r), lo), hi)


def _stats_py(pairs, lo, hi):
    """(saturations, max |q|) of (rounded r, stored q) pairs, as the _STAT_DOC text says."""
    n = sum(1 for r, _ in pairs if (r > 127 and hi == 127) or (r < -127 and lo == -127))
    return n, max(abs(q) for _, q in pairs)


def _expupd_py(T, R, M):
    """The rule of numerics.md section 8 on a Python list T (10 R words), register by
    register; returns the new list."""
    T = list(T)
    for r in range(R):
        E, C = T[r], T[2 * R + r]
        S, Q = T[3 * R + 2 * r], T[3 * R + 2 * r + 1]
        lo, hi, thr = T[7 * R + r], T[8 * R + r], T[9 * R + r]
        T[R + r] = E                                 # P = E
        T[5 * R + 2 * r], T[5 * R + 2 * r + 1] = S, Q   # S', Q' = S, Q
        T[3 * R + 2 * r], T[3 * R + 2 * r + 1] = 0, 0
        if S > thr:
            E, C = E + 1, 0
        elif Q < 64:
            C += 1
            if C >= M:
                E, C = E - 1, 0
        else:
            C = 0
        T[r], T[2 * R + r] = min(max(E, lo), hi), C
    return T


def _lut(e, temp=1.0):
    return [round(2**15 * math.exp(-dd * 2.0**e / temp)) for dd in range(256)]


def _softmax_py(row, lut):
    mx = max(row)
    E = [lut[mx - v] for v in row]
    return E, sum(E)


# ---------------------------------------------------------------- XBUF and DMA
def test_ld_st_xbuf_roundtrip():
    rng = np.random.default_rng(1)
    tab = rng.integers(-2**31, 2**31, 40, dtype=np.int64)
    tab[:2] = [-2**31, 2**31 - 1]
    d = DDR()
    src = d.put(tab, "i32")
    dst = d.reserve(4 * 40, dtype="i32")
    m = run([("LD", ld(XBUF, XBUF_WORDS - 40, src, (1, 1, 1, 40), (0, 0, 0, 1), esize=4)),
             ("ST", ld(XBUF, XBUF_WORDS - 40, dst, (1, 1, 1, 40), (0, 0, 0, 1), esize=4))], d)
    assert m.xbuf.size == XBUF_WORDS and m.xbuf.dtype == np.int32
    assert [int(v) for v in m.xbuf[-40:]] == [int(v) for v in tab]
    assert not m.xbuf[:-40].any()                      # zero-initialised elsewhere
    assert [int(v) for v in ddr_read(m, dst, (40,), "i32")] == [int(v) for v in tab]
    assert m.counters["ddr_read_bytes"] == m.counters["ddr_write_bytes"] == 160
    # a strided (non-fast-path) store of a 2-D box: the general path handles XBUF too
    dst2 = d.reserve(4 * 80, dtype="i32")
    m = run([("LD", ld(XBUF, 0, src, (1, 1, 1, 40), (0, 0, 0, 1), esize=4)),
             ("ST", ld(XBUF, 0, dst2, (1, 1, 4, 10), (0, 0, 20, 2), esize=4))], d)
    got = ddr_read(m, dst2, (80,), "i32")
    for i in range(4):
        for j in range(10):
            assert got[20 * i + 2 * j] == tab[10 * i + j]


@pytest.mark.parametrize("instr,needle", [
    (("LD", ld(XBUF, 0, 0, (1, 1, 1, 4), (0, 0, 0, 1), esize=1)), "esize=1"),
    (("ST", ld(XBUF, 0, 0, (1, 1, 1, 4), (0, 0, 0, 1), esize=2)), "esize=2"),
    (("LD", ld(XBUF, XBUF_WORDS - 3, 0, (1, 1, 1, 4), (0, 0, 0, 1), esize=4)),
     f"exceed the buffer size {XBUF_WORDS}"),
    (("LDCH", ld(XBUF, 0, 0, (1, 1, 1, 4), (0, 0, 0, 1), esize=4, gather=1, tab0=0)),
     "buf=3 (XBUF)"),
    (("STCH", ld(XBUF, 0, 0, (1, 1, 1, 4), (0, 0, 0, 1), esize=4, gather=1, tab0=0)),
     "buf=3 (XBUF)"),
])
def test_xbuf_dma_traps(instr, needle):
    t = _trap([("SEED", dict(ddr=0)), instr])
    assert (t.index, t.mnemonic) == (1, instr[0]) and needle in str(t), str(t)


_ONE = dict(n0=1, n1=1, n2=1, n3=4)
_GEOM = dict(planes=1, h=2, w=2, kh=1, kw=1, sh=1, sw=1)


@pytest.mark.parametrize("instr,field", [
    (("RQ", dict(saddr=0, dbuf=XBUF, daddr=0, shift=1, lo=-127, hi=127, **_ONE)), "dbuf"),
    (("VADD", dict(abuf=XBUF, bbuf=IBUF, dbuf=IBUF, count=4, nb=1, lo=-127, hi=127)), "abuf"),
    (("VADD", dict(abuf=IBUF, bbuf=XBUF, dbuf=IBUF, count=4, nb=1, lo=-127, hi=127)), "bbuf"),
    (("VMASK", dict(abuf=IBUF, bbuf=IBUF, dbuf=XBUF, count=4, lo=0, hi=128)), "dbuf"),
    (("MAC", dict(pattern=0, abuf=XBUF, bbuf=WBUF, n=1, ci=1, co=1, xh=1, xw=1, yh=1, yw=1,
                  kh=1, kw=1, sh=1, sw=1, g=1)), "abuf"),
    (("MAC", dict(pattern=0, abuf=IBUF, bbuf=XBUF, n=1, ci=1, co=1, xh=1, xw=1, yh=1, yw=1,
                  kh=1, kw=1, sh=1, sw=1, g=1)), "bbuf"),
    (("MAXP", dict(sbuf=XBUF, dbuf=IBUF, **_GEOM)), "sbuf"),
    (("MAXPB", dict(xbuf=IBUF, gbuf=XBUF, dbuf=IBUF, **_GEOM)), "gbuf"),
    (("RSUM", dict(sbuf=XBUF, n=1, c=1, hw=4)), "sbuf"),
    (("CSTAT", dict(sbuf=XBUF, n=1, c=1, hw=4)), "sbuf"),
    (("BNADAPT", dict(qbuf=XBUF, c=1, cnt=4)), "qbuf"),
    (("LOSSG", dict(zbuf=XBUF, dbuf=IBUF, lutaddr=8, n=1, k=2, rmul=1)), "zbuf"),
    (("LOSST", dict(zbuf=IBUF, tbuf=XBUF, dbuf=IBUF, lutaddr=8, n=1, k=2, rmul=1)), "tbuf"),
    (("SGD", dict(maddr=0, gbuf=XBUF, dbuf=WBUF, count=4, cshift=16, cbits=8)), "gbuf"),
    (("SGD", dict(maddr=0, gbuf=IBUF, dbuf=XBUF, count=4, cshift=16, cbits=8)), "dbuf"),
])
def test_xbuf_is_no_operand(instr, field):
    t = _trap([("SEED", dict(ddr=0)), instr])
    assert (t.index, t.mnemonic) == (1, instr[0]), str(t)
    assert f"field {field}=3 (XBUF)" in str(t), str(t)


# ---------------------------------------------------------------- RQ
def _rq_case(rng, shift):
    tile = (2, 3, 2, 4)
    if shift <= 0:
        v = rng.integers(-6, 7, tile)
        v.reshape(-1)[:2] = [0, 127 >> min(-shift, 7)]
    else:
        span = 1 << min(shift + 8, 31)
        v = rng.integers(-span, span, tile)
        v.reshape(-1)[:3] = [2**31 - 1, -(2**31 - 1), 1 << (shift - 1)]
    return v.astype(np.int32)


@pytest.mark.parametrize("case", range(12))
def test_rq_dyn_random_tables(case):
    rng = np.random.default_rng(100 + case)
    shift = [-31, -3, 0, 1, 7, 31][case % 6] if case < 6 else int(rng.integers(-31, 32))
    mode = case % 2
    lo, hi = [(-127, 127), (0, 127), (-127, 127), (-20, 35), (-127, 100), (0, 127)][case % 6]
    eb = int(rng.integers(-40, 10))
    ea = int(rng.integers(-40, 10))
    eo = shift + ea + eb
    R = 6
    X = rng.integers(-5, 5, 3 * R).tolist()
    xa, xb, xo, xs = 2, 5, 11, 14
    X[xa], X[xb], X[xo] = ea, eb, eo
    X[xs], X[xs + 1] = 9, 3                          # earlier statistics of the tensor
    v = _rq_case(rng, shift)
    full, off = (2, 5, 2, 4), (0, 2, 0, 0)
    g = dense_strides(full)
    gbase = sum(o * s for o, s in zip(off, g))
    seed, tid = 0xCAFE0000 + case, 31 + case
    d = DDR()
    sa = d.put(np.array([seed], np.uint32).view(np.int32), "i32")
    m = run([("SEED", dict(ddr=sa)), _xtab(d, X), _vec(d, v, ABUF, 7),
             ("RQ", dict(saddr=7, dbuf=IBUF, daddr=5, n0=2, n1=3, n2=2, n3=4, shift=99 - 128,
                         mode=mode, lo=lo, hi=hi, tid=tid, gbase=gbase, g0=g[0], g1=g[1],
                         g2=g[2], g3=g[3], dyn=1, xo=xo, xa=xa, xb=xb, st=1, xs=xs))], d)
    pairs = []
    got = m.ibuf[5:5 + v.size].reshape(v.shape)
    for i in np.ndindex(*v.shape):
        idx = gbase + sum(a * b for a, b in zip(i, g))
        r = rshift_py(int(v[i]), shift, ("nearest", "stochastic")[mode],
                      rand32_py(seed, tid, idx))
        q = _int8_result(r, lo, hi)
        assert got[i] == q, (i, shift)
        pairs.append((r, q))
    n, mx = _stats_py(pairs, lo, hi)
    assert int(m.xbuf[xs]) == 9 + n and int(m.xbuf[xs + 1]) == max(3, mx)
    if 0 < shift < 24 and hi == 127:
        assert n > 0                                 # the case really saturates
    X2 = list(X)
    X2[xs], X2[xs + 1] = 9 + n, max(3, mx)
    assert [int(x) for x in m.xbuf[:3 * R]] == X2    # nothing else in XBUF moved


def test_rq_dyn_ignores_the_shift_field_and_static_stats():
    """dyn=1 takes X[xo] - X[xa] - X[xb], not the field; st=1 works with dyn=0 too."""
    v = np.array([1000, -1000, 300, 20], np.int32)
    d = DDR()
    X = [0, 5, -9, 0, 0, 0, 0, 0]                       # shift = 0 - 5 + 9 = 4
    m = run([_xtab(d, X), _vec(d, v, ABUF),
             ("RQ", dict(saddr=0, dbuf=IBUF, daddr=0, shift=-7, lo=-127, hi=127, dyn=1,
                         xo=0, xa=1, xb=2, st=1, xs=4, **_ONE)),
             ("RQ", dict(saddr=0, dbuf=IBUF, daddr=8, shift=2, lo=-127, hi=127, st=1, xs=6,
                         **_ONE))], d)
    assert m.ibuf[:4].tolist() == [63, -62, 19, 1]     # (v + 8) >> 4
    assert m.ibuf[8:12].tolist() == [127, -127, 75, 5]
    assert m.xbuf[4:8].tolist() == [0, 63, 2, 127]


# ---------------------------------------------------------------- VADD
@pytest.mark.parametrize("case", range(10))
def test_vadd_dyn_random_tables(case):
    rng = np.random.default_rng(300 + case)
    nb = 0 if case in (3, 7) else 1
    mode = case % 2
    ea = int(rng.integers(-12, 4))
    eb = ea + int(rng.integers(-6, 7)) if case != 5 else ea - 31
    mn = min(ea, eb) if nb else ea
    shift = [-2, 0, 1, 3, 5, 31, -31, 2, 6, 4][case]
    eo = mn + shift
    lo, hi = [(-127, 127), (0, 127), (-127, 127), (0, 127), (-127, 127), (-127, 127),
              (-50, 60), (-127, 127), (-127, 127), (0, 127)][case]
    n = 57
    A = rng.integers(-127, 128, n).astype(np.int8)
    B = rng.integers(-127, 128, n).astype(np.int8)
    A[:2], B[:2] = [127, -127], [127, -127]
    X = rng.integers(-3, 3, 16).tolist()
    X[1], X[3], X[9] = ea, eb, eo
    X[12], X[13] = 2**31 - 3, -1                        # the count saturates, never wraps
    seed, tid, gbase = 0x5EED + case, 900 + case, 1000 * case
    d = DDR()
    sa = d.put(np.array([seed], np.uint32).view(np.int32), "i32")
    m = run([("SEED", dict(ddr=sa)), _xtab(d, X), _vec(d, A, IBUF, 0), _vec(d, B, WBUF, 3),
             ("VADD", dict(abuf=IBUF, aaddr=0, bbuf=WBUF, baddr=3, dbuf=WBUF, daddr=100,
                           count=n, nb=nb, sa=17, sb=9, shift=-5, mode=mode, tid=tid,
                           gbase=gbase, lo=lo, hi=hi, dyn=1, xa=1, xb=3, xo=9, st=1,
                           xs=12))], d)
    sa_, sb_ = ea - mn, (eb - mn if nb else 0)
    pairs = []
    for i in range(n):
        v = int(A[i]) * 2**sa_ + (int(B[i]) * 2**sb_ if nb else 0)
        r = rshift_py(v, shift, ("nearest", "stochastic")[mode], rand32_py(seed, tid, gbase + i))
        q = _int8_result(r, lo, hi)
        assert m.wbuf[100 + i] == q, (i, case)
        pairs.append((r, q))
    cnt, mx = _stats_py(pairs, lo, hi)
    assert int(m.xbuf[12]) == min(2**31 - 3 + cnt, 2**31 - 1)
    assert int(m.xbuf[13]) == mx
    if lo == -127 and shift <= 1:
        assert cnt > 2                                # the cap really was hit
        assert int(m.xbuf[12]) == 2**31 - 1


def test_vadd_relu_clamp_is_not_a_saturation():
    """nb=0, lo=0 (a ReLU): values far below 0 are clamped, not counted; above 127 they
    are (hi = 127)."""
    A = np.array([-127, -127, 100, 127, 3], np.int8)
    d = DDR()
    m = run([_xtab(d, [0, -4, -40, -5]), _vec(d, A, IBUF),
             ("VADD", dict(abuf=IBUF, dbuf=IBUF, daddr=10, count=5, nb=0, lo=0, hi=127,
                           dyn=1, xa=1, xb=2, xo=3, st=1, xs=6))], d)
    # m = X[xa] = -4 (B is absent: X[xb] = -40 is neither read nor range-checked),
    # shift = -5 + 4 = -1: doubled
    assert m.ibuf[10:15].tolist() == [0, 0, 127, 127, 6]
    assert m.xbuf[6:8].tolist() == [2, 127]


# ---------------------------------------------------------------- SGD
@pytest.mark.parametrize("case", range(10))
def test_sgd_dyn_random_tables(case):
    rng = np.random.default_rng(500 + case)
    cbits, dbuf = [(8, WBUF), (24, ABUF), (8, IBUF), (16, ABUF), (8, WBUF)][case % 5]
    cshift = [16, 8, 0, -3, 31, 17, 9, -31, 5, 12][case]
    lrshift = [16, 20, 0, 31, 7, 23, 3, 12, 1, 30][case]
    emas = int(rng.integers(-40, -10))
    ec = int(rng.integers(-20, 0))
    ed = cshift + emas - ec
    if not -32768 <= ed + 0 <= 32767:
        ed = 0
    eg = int(rng.integers(-15, 0))
    lrbase = lrshift + eg
    hi_c = (1 << (cbits - 1)) - 1
    mbound = min(2**31 - 1, (hi_c << max(cshift, 0)) * (3 if case % 2 else 1))
    n = 45
    M = rng.integers(-mbound, mbound + 1, n, dtype=np.int64)
    M[:3] = [mbound, -mbound, 0]
    G = rng.integers(-127, 128, n).astype(np.int8)
    G[:3] = [-127, 127, 0]
    lrmul = int(rng.integers(-2**31, 2**31)) if case % 3 else 3 << 20
    X = [0] * 16
    X[2], X[4], X[5], X[8] = eg, ec, ed, 0
    X[10], X[11] = 1, 7
    d = DDR()
    m = run([_xtab(d, X), _vec(d, M, ABUF, 0), _vec(d, G, IBUF, 64),
             ("SGD", dict(maddr=0, gbuf=IBUF, gaddr=64, dbuf=dbuf, daddr=300, count=n,
                          lrmul=lrmul, lrshift=200, cshift=200, cbits=cbits, dyn=1, xg=2,
                          xc=4, xd=5, emas=emas, lrbase=lrbase, mbound=mbound, st=1,
                          xs=10))], d)
    dst = m.bufs[("IBUF", "WBUF", "ABUF")[dbuf]]
    sats, mx = 0, 0
    for i in range(n):
        Mn = min(max(int(M[i]) - rshift_py(int(G[i]) * lrmul, lrshift, "nearest"), -mbound),
                 mbound)
        r = rshift_py(Mn, cshift, "nearest")
        D = sat_py(r, cbits)
        assert m.abuf[i] == Mn, i
        assert dst[300 + i] == D, i
        sats += abs(r) > hi_c
        mx = max(mx, abs(D))
    assert m.xbuf[10:12].tolist() == [1 + sats, max(7, mx)]
    if cshift < 0 or case % 2:
        assert sats > 0                          # the copy really saturated


@pytest.mark.parametrize("dyn", [0, 1])
def test_sgd_no_gradient(dyn):
    """ng=1: G = 0 and gbuf is not read (an address far outside every buffer is fine)."""
    M = np.array([2**20 + 5, -(2**20), 70000, -3, 2**31 - 1], np.int64)
    d = DDR()
    dyn_f = dict(dyn=1, xg=0, xc=1, xd=2, emas=-20, lrbase=5, mbound=2**22) if dyn else {}
    m = run([_xtab(d, [0, -6, 2]), _vec(d, M, ABUF),
             ("SGD", dict(maddr=0, gbuf=IBUF, gaddr=(1 << 20) - 1, dbuf=WBUF, daddr=0,
                          count=5, lrmul=12345, lrshift=3, cshift=16, cbits=8, ng=1,
                          **dyn_f))], d)
    bound = 2**22 if dyn else 127 << 16
    cshift = -6 + 2 + 20 if dyn else 16               # 16 both ways
    for i in range(5):
        Mn = min(max(int(M[i]), -bound), bound)
        assert m.abuf[i] == Mn
        assert m.wbuf[i] == sat_py(rshift_py(Mn, cshift, "nearest"))


# ---------------------------------------------------------------- statistics
def test_statistics_accumulate_over_instructions():
    """RQ, VADD (ReLU) and SGD add into the same pair; the pair's words only."""
    acc = np.array([5000, -5000, 40, 130000, -200000, 9], np.int32)
    A = np.array([-127, 127, 50, -60, 0, 1], np.int8)
    Mst = np.array([(127 << 16) + 1, 5 << 16, -(1 << 16)], np.int64)
    d = DDR()
    X = [0] * 8
    X[0], X[1] = 0, -3                # exponents: RQ out 0, a -3, b 0 -> shift 3
    X[4], X[5] = 100, 2
    m = run([_xtab(d, X), _vec(d, acc, ABUF, 0), _vec(d, A, IBUF, 0),
             _vec(d, Mst, ABUF, 50),
             ("RQ", dict(saddr=0, dbuf=IBUF, daddr=20, n0=1, n1=1, n2=1, n3=6, lo=0, hi=127,
                         dyn=1, xo=0, xa=1, xb=2, st=1, xs=4)),
             ("VADD", dict(abuf=IBUF, aaddr=0, dbuf=IBUF, daddr=40, count=6, nb=0, sa=1,
                           shift=0, lo=-127, hi=127, st=1, xs=4)),
             ("SGD", dict(maddr=50, gbuf=IBUF, dbuf=WBUF, daddr=0, count=3, ng=1, cbits=8,
                          dyn=1, xg=0, xc=0, xd=0, emas=-16, lrbase=0, mbound=2**30,
                          st=1, xs=4))], d)
    # RQ (ReLU lo=0): 5000>>3=625 and 130000>>3 saturate on top: 2; the two below -127
    # are clamped by the ReLU, not counted
    assert m.ibuf[20:26].tolist() == [127, 0, 5, 127, 0, 1]
    # VADD: 2*A: -254 and 254 saturate, -120, 100
    assert m.ibuf[40:46].tolist() == [-127, 127, 100, -120, 0, 2]
    # SGD: (127<<16)+1 -> r = 127 (fits), 5, -1: none saturate (mbound > copy bound)
    assert m.wbuf[0:3].tolist() == [127, 5, -1]
    assert m.xbuf[4:6].tolist() == [100 + 2 + 2, 127]
    assert not m.xbuf[6:].any() and m.xbuf[:4].tolist() == X[:4]


# ---------------------------------------------------------------- LOSSG / LOSST
def _luts(es, temp=1.0):
    return [v for e in es for v in _lut(e, temp)]


@pytest.mark.parametrize("ez,lutlo,nlut", [(-4, -6, 5), (-6, -6, 5), (-2, -6, 5), (0, 0, 1)])
def test_lossg_dyn_selects_the_table(ez, lutlo, nlut):
    N, K = 3, 7
    rng = np.random.default_rng(ez + 40)
    z = rng.integers(-127, 128, (N, K)).astype(np.int8)
    z[0, 0], z[0, 1] = 127, -127
    lab = np.array([1, 6, 0], np.int32)
    tables = _luts(range(lutlo, lutlo + nlut))
    rmul, shift = round(2**16 / N), 31 - 9
    d = DDR()
    m = run([_xtab(d, [0, 0, 0, ez]), _vec(d, z, IBUF), _vec(d, lab, ABUF, 0),
             _vec(d, tables, ABUF, 16),
             ("LOSSG", dict(zbuf=IBUF, zaddr=0, laddr=0, lutaddr=16, dbuf=WBUF, daddr=0, n=N,
                            k=K, rmul=rmul, shift=shift, dyn=1, xz=3, lutlo=lutlo,
                            nlut=nlut))], d)
    lut = _lut(ez)
    for n in range(N):
        E, S = _softmax_py([int(v) for v in z[n]], lut)
        for k in range(K):
            G = (E[k] * 2**15) // S - 2**15 * (k == lab[n])
            assert m.wbuf[n * K + k] == sat_py(rshift_py(G * rmul, shift, "nearest")), (n, k)


@pytest.mark.parametrize("kd", [0, 1])
def test_losst_dyn_selects_the_student_table(kd):
    N, K, ez, et, lutlo = 4, 6, -3, -4, -5
    rng = np.random.default_rng(kd + 7)
    z = rng.integers(-127, 128, (N, K)).astype(np.int8)
    t = rng.integers(-60, 60, (N, K)).astype(np.int8)
    t[1, 2] = 127                                 # a confident row
    temp = 2.0 if kd else 1.0
    tables = _luts(range(lutlo, lutlo + 4), temp)
    tlut = _lut(et, temp)
    thresh = 16384
    rmul, shift = round(2**16 / N), 31 - 9
    d = DDR()
    m = run([_xtab(d, [0, ez]), _vec(d, z, IBUF), _vec(d, t, WBUF),
             _vec(d, tables, ABUF, 0), _vec(d, tlut, ABUF, 2000),
             ("LOSST", dict(zbuf=IBUF, zaddr=0, tbuf=WBUF, taddr=0, lutaddr=0, tlutaddr=2000,
                            dbuf=IBUF, daddr=100, n=N, k=K, rmul=rmul, shift=shift, kd=kd,
                            thresh=thresh, dyn=1, xz=1, lutlo=lutlo, nlut=4))], d)
    lut = _lut(ez, temp)
    confident_rows = 0
    for n in range(N):
        E, S = _softmax_py([int(v) for v in z[n]], lut)
        F, ST = _softmax_py([int(v) for v in t[n]], tlut)
        a = [int(v) for v in t[n]].index(max(int(v) for v in t[n]))
        conf = 2**30 >= thresh * ST
        confident_rows += conf
        for k in range(K):
            P = (E[k] * 2**15) // S
            if kd:
                G = P - (F[k] * 2**15) // ST
            else:
                G = P - 2**15 * (k == a) if conf else 0
            assert m.ibuf[100 + n * K + k] == sat_py(rshift_py(G * rmul, shift, "nearest"))
    assert kd or 0 < confident_rows < N


# ---------------------------------------------------------------- EXPUPD
def _expupd_table(rng, R, calm):
    E = rng.integers(-12, 4, R)
    lo = E - rng.integers(0, 3, R)
    hi = E + rng.integers(0, 3, R)
    C = rng.integers(0, 9, R)
    thr = rng.integers(0, 20, R)
    S = np.where(rng.random(R) < 0.4, thr + rng.integers(1, 5, R),
                 np.minimum(thr, rng.integers(0, 20, R)))
    Q = np.where(rng.random(R) < 0.5, rng.integers(0, 64, R), rng.integers(64, 128, R))
    Q[:3] = [63, 64, 0][:R]                          # the edges of the calm test
    if R >= 4:              # one register for each clamp: coarser at hi, finer at lo
        hi[0], S[0], thr[0] = E[0], 5, 4
        lo[1], S[1], thr[1], Q[1], C[1] = E[1], 4, 4, 63, max(calm - 1, 0)
    P = rng.integers(-20, 5, R)
    SQ = np.stack([S, Q], 1).reshape(-1)
    old = rng.integers(0, 100, 2 * R)
    return np.concatenate([E, P, C, SQ, old, lo, hi, thr]).astype(np.int64)


@pytest.mark.parametrize("R,calm,xaddr", [(1, 8, 0), (37, 8, 5), (200, 3, 1000),
                                          (64, 0, XBUF_WORDS - 640), (50, 1, 77)])
def test_expupd_random_tables(R, calm, xaddr):
    rng = np.random.default_rng(R * 7 + calm)
    T = _expupd_table(rng, R, calm)
    if R == 1:
        T[3], T[4], T[9], T[2] = 0, 63, 0, 7          # calm: C 7 -> 8 >= M: finer
    d = DDR()
    pre = [9, -9, 123]                                # neighbours stay untouched
    before = pre if xaddr >= 3 else []
    after = pre if xaddr + 10 * R + 3 <= XBUF_WORDS else []
    m = run([_xtab(d, before + T.tolist() + after, xaddr - len(before)),
             ("EXPUPD", dict(xaddr=xaddr, count=R, calm=calm))], d)
    want = _expupd_py(T.tolist(), R, calm)
    assert [int(v) for v in m.xbuf[xaddr - len(before):xaddr + 10 * R + len(after)]] == \
        before + want + after
    assert m.counters["EXPUPD"] == 1
    assert m.counters["cycles_vector"] == 4 + -(-R // LANES) + 1     # + END
    if R >= 37:                     # every branch of the rule and both clamps were taken
        E, C, S, Q = T[:R], T[2 * R:3 * R], T[3 * R:5 * R:2], T[3 * R + 1:5 * R:2]
        lo, hi, thr = T[7 * R:8 * R], T[8 * R:9 * R], T[9 * R:]
        En = np.array(want[:R])
        coarse = S > thr
        quiet = ~coarse & (Q < 64)
        assert coarse.any() and (~coarse & ~quiet).any()
        assert (quiet & (C + 1 >= calm)).any()
        if calm > 1:
            assert (quiet & (C + 1 < calm)).any()
        assert ((En == hi) & coarse & (E + 1 > hi)).any()          # the hi clamp
        assert ((En == lo) & quiet & (C + 1 >= calm) & (E - 1 < lo)).any()   # the lo clamp


def test_expupd_by_hand():
    """Three registers through two EXPUPDs: saturating (coarser, up to hi), calm (finer
    after M = 2 calm steps), busy (C reset)."""
    R = 3
    E, P, C = [-5, -5, -5], [0, 0, 0], [0, 1, 1]
    SQ = [3, 127, 0, 10, 0, 100]
    lo, hi, thr = [-9, -9, -9], [-4, 0, 0], [2, 0, 0]
    T = E + P + C + SQ + [0] * 6 + lo + hi + thr
    d = DDR()
    m = run([_xtab(d, T), ("EXPUPD", dict(xaddr=0, count=R, calm=2)),
             ("EXPUPD", dict(xaddr=0, count=R, calm=2))], d)
    X = [int(v) for v in m.xbuf[:10 * R]]
    # step 1: r0 coarser -> -4, r1 calm (C 1 -> 2 >= 2) -> -6, r2 busy (C -> 0)
    # step 2: S, Q are 0 now: r0 calm C 1, r1 calm C 1, r2 calm C 1
    assert X[:R] == [-4, -6, -5] and X[R:2 * R] == [-4, -6, -5]
    assert X[2 * R:3 * R] == [1, 1, 1]
    assert X[3 * R:5 * R] == [0] * 6 and X[5 * R:7 * R] == [0] * 6


# ---------------------------------------------------------------- traps
def _rq_dyn(**kw):
    f = dict(saddr=0, dbuf=IBUF, daddr=0, lo=-127, hi=127, dyn=1, xo=0, xa=1, xb=2, **_ONE)
    f.update(kw)
    return ("RQ", f)


def _vadd_dyn(**kw):
    f = dict(abuf=IBUF, bbuf=IBUF, dbuf=IBUF, count=4, nb=1, lo=-127, hi=127, dyn=1, xa=0,
             xb=1, xo=2)
    f.update(kw)
    return ("VADD", f)


def _sgd_dyn(**kw):
    f = dict(maddr=0, gbuf=IBUF, dbuf=WBUF, count=4, cbits=8, dyn=1, xg=0, xc=1, xd=2,
             emas=0, lrbase=0, mbound=1000)
    f.update(kw)
    return ("SGD", f)


def _lossg_dyn(**kw):
    return ("LOSSG", dict(zbuf=IBUF, dbuf=IBUF, daddr=64, lutaddr=16, n=1, k=2, rmul=1,
                          dyn=1, xz=0, **kw))


@pytest.mark.parametrize("X,instr,needle", [
    ([32, 0, 0], _rq_dyn(), "= 32 outside [-31, 31]"),
    ([0, 20, 12], _rq_dyn(), "0 - 20 - 12 = -32"),
    ([0, 0, 0], _rq_dyn(xo=XBUF_WORDS), f"xo={XBUF_WORDS}"),
    ([0, 0, 0], _rq_dyn(st=1, xs=XBUF_WORDS - 1), f"xs={XBUF_WORDS - 1}"),
    ([0, 32, 0], _vadd_dyn(), "sb = X[xb] - m = 32 - 0 = 32"),
    ([-32, 0, 0], _vadd_dyn(), "sb = X[xb] - m = 0 - -32"),
    ([0, 0, 32], _vadd_dyn(), "shift = X[xo] - m = 32 - 0 = 32"),
    ([5, 0, -32], _vadd_dyn(), "= -32 outside [-31, 31]"),
    ([0, 0, 0], _vadd_dyn(xa=XBUF_WORDS + 5), f"xa={XBUF_WORDS + 5}"),
    ([1, 0, 0], _sgd_dyn(), "lrshift = lrbase - X[xg] = 0 - 1 = -1"),
    ([-32, 0, 0], _sgd_dyn(), "= 32 outside [0, 31]"),
    ([0, 30, 2], _sgd_dyn(), "cshift = X[xc] + X[xd] - emas = 30 + 2 - 0 = 32"),
    ([0, -16, 0], _sgd_dyn(emas=16), "= -32 outside [-31, 31]"),
    ([0, 0, 0], _sgd_dyn(mbound=2**31), "mbound=2147483648"),
    ([0, 0, 0], _sgd_dyn(xd=XBUF_WORDS), f"xd={XBUF_WORDS}"),
    ([-3, 0, 0], _lossg_dyn(lutlo=-2, nlut=2), "j = X[xz] - lutlo = -3 - -2 = -1"),
    ([0, 0, 0], _lossg_dyn(lutlo=-2, nlut=2), "= 2 outside [0, nlut=2)"),
    ([0, 0, 0], _lossg_dyn(lutlo=0, nlut=0), "= 0 outside [0, nlut=0)"),
    ([0, 0, 0], ("LOSST", dict(zbuf=IBUF, tbuf=IBUF, dbuf=IBUF, daddr=64, lutaddr=16,
                               tlutaddr=16, n=1, k=2, rmul=1, dyn=1, xz=0, lutlo=1, nlut=3)),
     "j = X[xz] - lutlo = 0 - 1 = -1"),
    ([0, 0, 0], ("EXPUPD", dict(xaddr=XBUF_WORDS - 29, count=3, calm=8)),
     f"[{XBUF_WORDS - 29}, {XBUF_WORDS + 1})"),
    ([0, 0, 0], ("EXPUPD", dict(xaddr=0, count=0, calm=8)), "empty"),
])
def test_dyn_traps(X, instr, needle):
    d = DDR()
    t = _trap([_xtab(d, X), _vec(d, _lut(-3), ABUF, 16), instr], d)
    assert (t.index, t.mnemonic) == (2, instr[0]) and needle in str(t), str(t)


def test_lossg_dyn_table_past_abuf_traps():
    """j in range but its table leaves ABUF: the read is range-checked like lutaddr's."""
    d = DDR()
    t = _trap([_xtab(d, [3]), ("LOSSG", dict(zbuf=IBUF, dbuf=IBUF, daddr=64,
                                             lutaddr=TARGET.abuf - 1000, n=1, k=2, rmul=1,
                                             dyn=1, xz=0, lutlo=0, nlut=4))], d)
    assert t.mnemonic == "LOSSG" and "ABUF" in str(t) and "lutaddr" in str(t), str(t)


# ---------------------------------------------------------------- host: current exponents
def _dyn_host_program():
    """in:x [N, F] @ fc.weight^T -> logits through RQ dyn=1 st=1, then EXPUPD and the
    table stored back: registers 0 zero, 1 x (static), 2 fc.weight (moves finer), 3 logits
    (saturates: moves coarser)."""
    from test_emu_util import build
    N, F, K = 3, 6, 4
    rng = np.random.default_rng(11)
    w = rng.integers(-127, 128, (K, F)).astype(np.int8)
    names = ["zero", "x", "fc.weight", "logits"]
    R = len(names)
    E = [0, -5, -7, -5]
    T = (E + E + [0, 0, 7, 0] + [0] * (4 * R) + [0, -5, -9, -7] + [0, -5, -4, -1]
         + [0, 0, 0, 0])
    d = DDR()

    def sym(name, kind, xreg=None):
        s = d.symbols[-1]
        s.update(name=name, kind=kind)
        if xreg is not None:
            s["xreg"] = xreg

    ax = d.reserve(N * F, "in:x", [N, F], exp=-5)
    sym("in:x", "input", [1])
    d.reserve(4 * N, "in:labels", [N], dtype="i32")
    asd = d.reserve(4, "rng_seed", [1], dtype="i32")
    aw = d.put(w, "i8", "fc.weight", -6)                     # compile-time exp: stale
    sym("fc.weight", "param", [2])
    d.put(w.astype(np.int32) << 16, "i32", "fc.weight:master", -22)
    sym("fc.weight:master", "master")
    d.put(np.array([5, -7], np.int32), "i32", "fc.bias", 0)
    sym("fc.bias", "param", [1, 2])
    az = d.reserve(N * K, "logits", [N, K], exp=-3)
    sym("logits", "act", [3])
    d.put(np.zeros(N * K, np.int8), "i8", "static", -4)
    sym("static", "act", [])
    at = d.put(np.array(T, np.int32), "i32", "xtab", None)
    sym("xtab", "xtab")
    meta = {"logits": "logits", "xregs": names, "params": [
        {"name": "fc.weight", "shape": [K, F], "master": "fc.weight:master", "grad": None,
         "out_tab": None, "in_tab": None, "in_block": 1}]}
    xs = 3 * R + 2 * 3
    prog = [("LD", ld(XBUF, 0, at, (1, 1, 1, 10 * R), (0, 0, 0, 1), esize=4)),
            ("SEED", dict(ddr=asd)),
            ("LD", ld(IBUF, 0, ax, (N, F, 1, 1), (F, 1, 0, 0))),
            ("LD", ld(WBUF, 0, aw, (K, F, 1, 1), (F, 1, 0, 0))),
            ("MAC", dict(pattern=0, abuf=IBUF, aaddr=0, bbuf=WBUF, baddr=0, caddr=0, n=N,
                         ci=F, co=K, xh=1, xw=1, yh=1, yw=1, kh=1, kw=1, sh=1, sw=1, g=1)),
            ("RQ", dict(saddr=0, dbuf=IBUF, daddr=100, n0=1, n1=1, n2=N, n3=K, lo=-127,
                        hi=127, dyn=1, xo=3, xa=1, xb=2, st=1, xs=xs)),
            ("ST", ld(IBUF, 100, az, (1, 1, N, K), (0, 0, K, 1))),
            ("EXPUPD", dict(xaddr=0, count=R, calm=8)),
            ("ST", ld(XBUF, 0, at, (1, 1, 1, 10 * R), (0, 0, 0, 1), esize=4))]
    return build(prog, d, meta=meta), w, T, names


def test_host_reads_current_exponents():
    from edgec.runtime_emu.host import exponent_moves, read_real, run_step
    p, w, T, names = _dyn_host_program()
    N, F = 3, w.shape[1]
    R = len(names)
    x = np.random.default_rng(2).normal(0, 3, (N, F))
    out, m = run_step(p, TARGET, x, np.array([0, 1, 2]))
    xq = [[sat_py(round(float(v) * 2**5)) for v in row] for row in x]   # e_x = E[x] = -5
    assert out["sym/in:x"].tolist() == xq
    shift = -5 + 5 + 7                                # E[logits] - E[x] - E[fc.weight]
    rs = [[rshift_py(sum(xq[n][f] * int(w[k, f]) for f in range(F)), shift, "nearest")
           for k in range(w.shape[0])] for n in range(N)]
    z = [[sat_py(r) for r in row] for row in rs]
    assert out["sym/logits"].tolist() == z
    sats = sum(abs(r) > 127 for row in rs for r in row)
    assert sats > 0
    T_run = list(T)
    T_run[3 * R + 6], T_run[3 * R + 7] = sats, max(abs(q) for row in z for q in row)
    want = _expupd_py(T_run, R, 8)
    assert out["xtab"].tolist() == want and out["xtab"].dtype == np.int32
    assert want[:R] == [0, -5, -8, -4]                # weight finer, logits coarser
    assert {k: int(v) for k, v in out.items() if k.startswith("exp/")} == \
        {"exp/zero": 0, "exp/x": -5, "exp/fc.weight": -8, "exp/logits": -4}
    # logits: the exponent the step computed with (P = -5), not the new E (-4) nor the
    # symbol's compile-time exp (-3)
    np.testing.assert_array_equal(out["logits"], np.array(z, np.float32) * np.float32(2.0**-5))
    np.testing.assert_array_equal(read_real(m, "logits"), out["logits"])
    zr = np.array(z, np.float64) * 2.0**-5
    loss = sum(math.log(sum(math.exp(v) for v in zr[n])) - zr[n, lab] for n, lab in
               enumerate([0, 1, 2])) / N
    assert float(out["loss"]) == np.float32(loss)
    # parameters: E after the move (the copies are derived there), sums over registers
    np.testing.assert_array_equal(read_real(m, "fc.weight"),
                                  w.astype(np.float32) * np.float32(2.0**-8))
    assert read_real(m, "fc.bias").tolist() == [5 * 2.0**-13, -7 * 2.0**-13]
    # no xreg (master, empty list): the symbol's exp
    np.testing.assert_array_equal(out["param/fc.weight"],
                                  (w.astype(np.float64) * 2.0**-6).astype(np.float32))
    assert read_real(m, "static").tolist() == [0.0] * 12
    # the moves of this step
    moves = exponent_moves(T, out["xtab"], names)
    assert moves == [
        {"register": 2, "name": "fc.weight", "old": -7, "new": -8, "saturations": 0,
         "max_q": 0},
        {"register": 3, "name": "logits", "old": -5, "new": -4, "saturations": sats,
         "max_q": 127}]
    assert exponent_moves(out["xtab"], out["xtab"], names) == []


def test_host_xtab_errors():
    from edgec.isa.errors import EdgecError
    from edgec.runtime_emu.host import exponent_moves, read_real
    from edgec.runtime_emu.machine import Machine
    p, w, T, names = _dyn_host_program()
    m = Machine(p, TARGET)
    next(s for s in p.symbols if s["name"] == "fc.weight")["xreg"] = [4]
    with pytest.raises(EdgecError, match=r"xreg \[4\].*\[0, 4\)"):
        read_real(m, "fc.weight")
    p.meta["xregs"] = names[:3]
    with pytest.raises(EdgecError, match="xregs"):
        read_real(m, "fc.weight")
    with pytest.raises(EdgecError, match="10 words per register"):
        exponent_moves(T, T[:30], names)
