"""VADD, VMASK's (lo, hi) range and RQ's (lo, hi) clamp against element-by-element
references (rand32 / rshift / sat from the pure-Python helpers of test_emu_util)."""
import numpy as np
import pytest

from edgec.isa.errors import TrapError

from test_emu_util import (ABUF, DDR, IBUF, TARGET, WBUF, ld, rand32_py, rshift_py, run,
                           sat_py)

SEED = 0xC0FFEE12


def _put_i8(d, arr, buf, addr):
    a = d.put(np.asarray(arr, np.int8))
    return ("LD", ld(buf, addr, a, (1, 1, 1, len(arr)), (0, 0, 0, 1)))


def _put_i32(d, arr, addr):
    a = d.put(np.asarray(arr, np.int64).astype(np.int32), "i32")
    return ("LD", ld(ABUF, addr, a, (1, 1, 1, len(arr)), (0, 0, 0, 1), esize=4))


def _seed(d, seed=SEED):
    return ("SEED", dict(ddr=d.put(np.array([seed], np.uint32).view(np.int32), "i32")))


def vadd_ref(a, b, sa, sb, shift, mode, lo, hi, tid, gbase, seed=SEED):
    out = []
    for i, x in enumerate(a):
        v = int(x) * 2**sa + (0 if b is None else int(b[i]) * 2**sb)
        r = rand32_py(seed, tid, gbase + i)
        q = sat_py(rshift_py(v, shift, ("nearest", "stochastic")[mode], r))
        out.append(min(max(q, lo), hi))
    return out


def _vadd(**f):
    d = dict(abuf=IBUF, aaddr=0, bbuf=WBUF, baddr=0, dbuf=WBUF, daddr=500, nb=1, sa=0, sb=0,
             shift=0, mode=0, tid=0, gbase=0, lo=-127, hi=127)
    d.update(f)
    return ("VADD", d)


@pytest.mark.parametrize("mode,sa,sb,shift,lo,hi", [
    (0, 0, 0, 0, -127, 127),          # plain saturating add
    (0, 0, 3, 3, -127, 127),          # residual add, b at a coarser exponent
    (0, 5, 0, 6, 0, 127),             # with a fused ReLU
    (0, 2, 2, 1, -40, 63),            # Hardtanh-like clamp
    (1, 0, 4, 4, -127, 127),          # error sum, stochastic
    (1, 7, 0, 9, -127, 127),
    (1, 31, 31, 31, -127, 127),       # extreme alignment
    (1, 0, 0, 0, -127, 127),          # stochastic with shift 0: exact, no random bits
    (0, 1, 0, -2, -127, 127),         # left shift, saturates
    (1, 31, 0, -31, -127, 127),       # |v * 2**31| way past int64 before saturation
    (1, 3, 1, 2, 7, 7),               # lo == hi
])
def test_vadd(mode, sa, sb, shift, lo, hi):
    rng = np.random.default_rng(1000 + 37 * sa + 11 * sb + shift + mode)
    n = 300
    a = rng.integers(-128, 128, n)
    b = rng.integers(-128, 128, n)
    a[:6] = [0, 0, 1, -1, 127, -128]
    b[:6] = [0, 1, 0, -1, 127, -128]
    tid, gbase = 4321, 123456
    d = DDR()
    prog = [_seed(d), _put_i8(d, a, IBUF, 10), _put_i8(d, b, WBUF, 20),
            _vadd(aaddr=10, baddr=20, count=n, sa=sa, sb=sb, shift=shift, mode=mode, tid=tid,
                  gbase=gbase, lo=lo, hi=hi)]
    m = run(prog, d)
    got = [int(x) for x in m.wbuf[500:500 + n]]
    assert got == vadd_ref(a, b, sa, sb, shift, mode, lo, hi, tid, gbase)
    assert m.counters["VADD"] == 1
    assert m.counters["cycles_vector"] == 4 + -(-n // TARGET.vector_lanes) + 1   # + END
    if mode == 1 and shift > min(sa, sb) and lo < hi:
        # the random bits matter (v is not a multiple of 2**shift): nearest differs somewhere
        assert got != vadd_ref(a, b, sa, sb, shift, 0, lo, hi, tid, gbase)


def test_vadd_rounding_ties_and_saturation_by_hand():
    # nearest, shift 1: (a + b + 1) >> 1 with ties toward +inf
    a = [1, -1, 3, -3, 127, -127, 100, -100]
    b = [0, 0, 0, 0, 127, -127, 100, -100]
    d = DDR()
    m = run([_put_i8(d, a, IBUF, 0), _put_i8(d, b, IBUF, 100),
             _vadd(bbuf=IBUF, baddr=100, count=8, shift=1, dbuf=IBUF, daddr=200),
             _vadd(bbuf=IBUF, baddr=100, count=8, shift=0, dbuf=IBUF, daddr=300)], d)
    assert m.ibuf[200:208].tolist() == [1, 0, 2, -1, 127, -127, 100, -100]
    assert m.ibuf[300:308].tolist() == [1, -1, 3, -3, 127, -127, 127, -127]


def test_vadd_stochastic_independent_of_tiling_and_seeded():
    rng = np.random.default_rng(5)
    a = rng.integers(-127, 128, 64)
    b = rng.integers(-127, 128, 64)
    d = DDR()
    common = dict(sb=2, shift=5, mode=1, tid=9)
    prog = [_seed(d), _put_i8(d, a, IBUF, 0), _put_i8(d, b, WBUF, 0),
            _vadd(count=64, daddr=100, **common),
            _vadd(count=40, daddr=200, **common),
            _vadd(aaddr=40, baddr=40, count=24, daddr=240, gbase=40, **common),
            _vadd(count=64, daddr=300, **{**common, "tid": 10})]
    m = run(prog, d)
    assert m.wbuf[100:164].tolist() == m.wbuf[200:264].tolist()
    assert m.wbuf[100:164].tolist() != m.wbuf[300:364].tolist()     # another tid
    m2 = run([_seed(d, SEED + 1)] + prog[1:4], d)
    assert m2.wbuf[100:164].tolist() != m.wbuf[100:164].tolist()    # another seed
    assert m2.wbuf[100:164].tolist() == vadd_ref(a, b, 0, 2, 5, 1, -127, 127, 9, 0, SEED + 1)


def test_vadd_without_b_is_a_standalone_activation():
    a = np.arange(-128, 128)
    d = DDR()
    # nb=0: B is neither validated nor read (ABUF at an address past the buffer end)
    m = run([_put_i8(d, a, IBUF, 0),
             _vadd(nb=0, bbuf=ABUF, baddr=(1 << 20) - 1, count=256, lo=0, hi=127,
                   dbuf=IBUF, daddr=1000),
             _vadd(nb=0, bbuf=3, count=256, lo=-32, hi=48, dbuf=IBUF, daddr=2000),
             _vadd(nb=0, count=256, sa=1, shift=1, mode=1, tid=3, dbuf=IBUF, daddr=3000),
             _vadd(nb=0, count=256, dbuf=IBUF, daddr=0)], d)           # in place
    assert m.ibuf[1000:1256].tolist() == [min(max(int(x), 0), 127) for x in a]
    assert m.ibuf[2000:2256].tolist() == [min(max(int(x), -32), 48) for x in a]
    # 2a >> 1 with any random addend below 2 is exactly a (then saturated)
    assert m.ibuf[3000:3256].tolist() == [sat_py(int(x)) for x in a]
    assert m.ibuf[0:256].tolist() == [sat_py(int(x)) for x in a]


@pytest.mark.parametrize("fields,needle", [
    (dict(abuf=ABUF), "abuf=ABUF"),
    (dict(bbuf=ABUF), "bbuf=ABUF"),
    (dict(dbuf=ABUF), "dbuf=ABUF"),
    (dict(dbuf=3), "dbuf=3"),
    (dict(shift=32), "shift=32"),
    (dict(shift=-32), "shift=-32"),
    (dict(lo=5, hi=4), "lo=5, hi=4"),
    (dict(lo=-128), "lo=-128"),
    (dict(lo=0, hi=-1), "lo=0, hi=-1"),
    (dict(count=0), "empty"),
    (dict(daddr=TARGET.wbuf - 3), "daddr"),
    (dict(baddr=TARGET.wbuf - 3), "baddr"),
])
def test_vadd_traps(fields, needle):
    with pytest.raises(TrapError) as ei:
        run([("SEED", dict(ddr=0)), _vadd(**{"count": 4, **fields})])
    t = ei.value
    assert (t.index, t.mnemonic) == (1, "VADD") and needle in str(t), str(t)


@pytest.mark.parametrize("lo,hi", [(0, 128), (-64, 64), (-5, 7), (3, 3), (-200, 30000)])
def test_vmask_range(lo, hi):
    rng = np.random.default_rng(lo + 1000)
    n = 200
    a = rng.integers(-127, 128, n)
    b = rng.integers(-140, 140, n)
    b[:8] = [lo, hi, lo + 1, hi - 1, 127, -127, 0, 128]
    d = DDR()
    m = run([_put_i8(d, a, IBUF, 0), _put_i32(d, b, 0), _put_i8(d, np.clip(b, -128, 127),
                                                               WBUF, 0),
             ("VMASK", dict(abuf=IBUF, aaddr=0, bbuf=ABUF, baddr=0, dbuf=IBUF, daddr=300,
                            count=n, lo=lo, hi=hi)),
             ("VMASK", dict(abuf=IBUF, aaddr=0, bbuf=WBUF, baddr=0, dbuf=ABUF, daddr=300,
                            count=n, lo=lo, hi=hi))], d)
    assert m.ibuf[300:300 + n].tolist() == [int(a[i]) if lo < b[i] < hi else 0
                                            for i in range(n)]
    bc = np.clip(b, -128, 127)
    assert m.abuf[300:300 + n].tolist() == [int(a[i]) if lo < bc[i] < hi else 0
                                            for i in range(n)]
    assert m.counters["cycles_vector"] == 2 * (4 + -(-n // TARGET.vector_lanes)) + 1


def test_relu_and_hardtanh_backward_with_vmask():
    y = np.array([-127, -1, 0, 1, 63, 64, 65, 126, 127])
    dy = np.arange(1, 10)
    d = DDR()
    m = run([_put_i8(d, dy, IBUF, 0), _put_i8(d, y, WBUF, 0),
             ("VMASK", dict(abuf=IBUF, bbuf=WBUF, dbuf=IBUF, daddr=100, count=9, lo=0, hi=128)),
             ("VMASK", dict(abuf=IBUF, bbuf=WBUF, dbuf=IBUF, daddr=200, count=9, lo=0, hi=64))],
            d)
    assert m.ibuf[100:109].tolist() == [0, 0, 0, 4, 5, 6, 7, 8, 9]   # saturated 127 passes
    assert m.ibuf[200:209].tolist() == [0, 0, 0, 4, 5, 0, 0, 0, 0]   # bounds block


@pytest.mark.parametrize("lo,hi,needle", [(1, 0, "lo=1, hi=0"), (-128, 0, "lo=-128"),
                                          (0, 0, None), (-127, 127, None)])
def test_rq_clamp_fields(lo, hi, needle):
    d = DDR()
    prog = [_put_i32(d, [-1000, -3, 0, 5, 1000], 0),
            ("RQ", dict(saddr=0, dbuf=IBUF, daddr=0, n0=1, n1=1, n2=1, n3=5, shift=0,
                        lo=lo, hi=hi))]
    if needle:
        with pytest.raises(TrapError) as ei:
            run(prog, d)
        assert ei.value.mnemonic == "RQ" and needle in str(ei.value), str(ei.value)
    else:
        m = run(prog, d)
        assert m.ibuf[:5].tolist() == [min(max(sat_py(v), lo), hi) for v in (-1000, -3, 0, 5,
                                                                               1000)]
