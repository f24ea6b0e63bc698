"""rand32 / rshift against pure-Python integers; LD/ST/LDCH/STCH/SEED against naive loops."""
import numpy as np
import pytest

from edgec.runtime_emu.numerics import rshift, rshift32
from edgec.runtime_emu.rng import index_hash, rand32, rand32_at

from test_emu_util import (ABUF, DDR, IBUF, TARGET, WBUF, ddr_read, dense_strides, ld,
                           rand32_py, rshift_py, run)


def test_rand32_matches_pure_python():
    rng = np.random.default_rng(1)
    for seed, tid in [(0, 0), (1, 7), (0xFFFFFFFF, 0xFFFF), (123456789, 42)]:
        idx = np.concatenate([np.arange(50), rng.integers(0, 2**32, 50), [2**32 - 1]])
        got = rand32(seed, tid, idx)
        assert got.dtype == np.uint32
        assert [int(g) for g in got] == [rand32_py(seed, tid, int(i)) for i in idx]


def test_rand32_known_values():
    # anchors computed by hand-checked pure Python with explicit & 0xFFFFFFFF
    assert rand32_py(0, 0, 0) == 0
    assert int(rand32(0, 0, [0])[0]) == 0
    assert int(rand32(1, 2, [3])[0]) == rand32_py(1, 2, 3)
    h = (1 * 0x9E3779B1 + 2 * 0x85EBCA77 + 3 * 0xC2B2AE3D) & 0xFFFFFFFF
    h ^= h >> 16
    h = (h * 0x7FEB352D) & 0xFFFFFFFF
    h ^= h >> 15
    h = (h * 0x846CA68B) & 0xFFFFFFFF
    h ^= h >> 16
    assert int(rand32(1, 2, [3])[0]) == h
    # distinct tensors / elements decorrelate
    assert len(set(rand32(5, 1, np.arange(1000)).tolist())) == 1000


@pytest.mark.parametrize("s", [-3, 0, 1, 2, 7, 16, 31])
def test_rshift_matches_python(s):
    rng = np.random.default_rng(s + 100)
    v = rng.integers(-2**31 + 1, 2**31 - 1, 300).astype(np.int64)
    v[:6] = [0, 1, -1, 2**(max(s, 1) - 1), -2**(max(s, 1) - 1), 3 * 2**(max(s, 1) - 1)]
    r = rand32(9, 3, np.arange(v.size))
    near = rshift(v, s, "nearest")
    sto = rshift(v, s, "stochastic", r)
    for k in range(v.size):
        assert near[k] == rshift_py(int(v[k]), s, "nearest")
        assert sto[k] == rshift_py(int(v[k]), s, "stochastic", int(r[k]))


def test_rand32_at_offsets_a_hashed_index():
    # the RQ fast path: rand32_at(seed, tid, off, index_hash(i)) == rand32_py(.., off + i)
    rng = np.random.default_rng(2)
    idx = np.concatenate([np.arange(40), rng.integers(0, 2**31, 40)])
    for seed, tid, off in [(0, 0, 0), (7, 3, 5), (0xFFFFFFFF, 0xFFFF, 2**31 - 1), (9, 1, -6)]:
        got = rand32_at(seed, tid, off, index_hash(idx))
        assert [int(g) for g in got] == [rand32_py(seed, tid, (off + int(i)) & 0xFFFFFFFF)
                                         for i in idx]


@pytest.mark.parametrize("s", [1, 2, 5, 7, 16, 30, 31])
def test_rshift32_matches_python(s):
    # int32-only rounding (RQ) against pure-Python integers, at the int32 extremes too
    rng = np.random.default_rng(s + 200)
    v = rng.integers(-2**31 + 1, 2**31, 400).astype(np.int32)
    v[:8] = np.clip([0, 1, -1, 2**31 - 1, -(2**31 - 1), 2**(s - 1), -2**(s - 1),
                     3 * 2**(s - 1) - 1], -(2**31 - 1), 2**31 - 1)
    r = rand32(4, 5, np.arange(v.size))
    r[:4] = [0, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF]
    near, sto = rshift32(v, s), rshift32(v, s, r)
    assert near.dtype == sto.dtype == np.int32
    for k in range(v.size):
        assert near[k] == rshift_py(int(v[k]), s, "nearest")
        assert sto[k] == rshift_py(int(v[k]), s, "stochastic", int(r[k]))


def test_ld_strided_broadcast_and_sign_extension():
    src = np.arange(-60, 60).reshape(4, 5, 6).astype(np.int8)  # includes negatives
    src32 = (np.arange(24) * -100003).astype(np.int32)
    d = DDR()
    a8 = d.put(src)
    a32 = d.put(src32, "i32")
    # box [2 (broadcast), 2, 3, 2] from src[1:, ::2, 1::2]-like pattern
    f1 = ld(IBUF, 5, a8 + 30 + 1, (2, 2, 3, 2), (0, 60, 12, 2))
    f2 = ld(ABUF, 7, a32 + 4 * 3, (1, 3, 2, 2), (0, 6, 1, 2), esize=4)
    m = run([("LD", f1), ("LD", f2)], d)
    flat = src.reshape(-1)
    exp = np.zeros((2, 2, 3, 2), np.int64)
    for i0 in range(2):
        for i1 in range(2):
            for i2 in range(3):
                for i3 in range(2):
                    exp[i0, i1, i2, i3] = flat[30 + 1 + i1 * 60 + i2 * 12 + i3 * 2]
    np.testing.assert_array_equal(m.ibuf[5:5 + 24].reshape(2, 2, 3, 2), exp)
    assert m.ibuf[4] == 0 and m.ibuf[29] == 0
    exp32 = [src32[3 + i1 * 6 + i2 + i3 * 2] for i1 in range(3) for i2 in range(2) for i3 in range(2)]
    np.testing.assert_array_equal(m.abuf[7:7 + 12], exp32)
    c = m.counters
    assert c["LD"] == 2 and c["END"] == 1 and c["instructions"] == 3
    assert c["ddr_read_bytes"] == 24 + 48
    lat, bpc = TARGET.ddr_latency, TARGET.ddr_bytes_per_cycle
    assert c["cycles"] == (lat + -(-24 // bpc)) + (lat + -(-48 // bpc)) + 1
    # read_map: exactly the bytes read
    rm = np.zeros_like(m.read_map)
    for i1 in range(2):
        for i2 in range(3):
            for i3 in range(2):
                rm[a8 + 31 + i1 * 60 + i2 * 12 + i3 * 2] = 1
    for i1 in range(3):
        for i2 in range(2):
            for i3 in range(2):
                e = a32 + 4 * (3 + i1 * 6 + i2 + i3 * 2)
                rm[e:e + 4] = 1
    np.testing.assert_array_equal(m.read_map, rm)
    assert (m.last_writer == -1).all()


def test_st_strided_roundtrip_and_last_writer():
    d = DDR()
    src = np.arange(-12, 12, dtype=np.int32) * 1000
    a = d.put(src, "i32")
    out = d.reserve(4 * 64)
    out8 = d.reserve(64)
    prog = [("LD", ld(ABUF, 0, a, (1, 2, 3, 4), dense_strides((1, 2, 3, 4)), esize=4)),
            # store transposed: element (0,i1,i2,i3) -> out[i3*6 + i2*2 + i1]
            ("ST", ld(ABUF, 0, out, (1, 2, 3, 4), (0, 1, 2, 6), esize=4)),
            ("LD", ld(WBUF, 0, a, (1, 1, 1, 4), (0, 0, 0, 0), esize=1)),  # low bytes
            ("ST", ld(WBUF, 0, out8, (1, 1, 2, 2), (0, 0, 8, 3)))]
    m = run(prog, d)
    got = ddr_read(m, out, (24,), "i32")
    for i1 in range(2):
        for i2 in range(3):
            for i3 in range(4):
                assert got[i3 * 6 + i2 * 2 + i1] == src[(i1 * 3 + i2) * 4 + i3]
    assert (m.last_writer[out:out + 96] == 1).all()
    assert (m.last_writer[out + 96:out + 256] == -1).all()
    low = np.int8(src.view(np.uint8)[0].astype(np.int8))
    for k in [0, 3, 8, 11]:
        assert m.ddr[out8 + k].astype(np.int8) == low
        assert m.last_writer[out8 + k] == 3
    assert m.last_writer[out8 + 1] == -1
    assert m.counters["ddr_write_bytes"] == 96 + 4
    assert m.counters["ST"] == 2


def test_st_duplicates_last_box_element_wins():
    d = DDR()
    a = d.put(np.array([1, 2, 3, 4], np.int8))
    out = d.reserve(16)
    m = run([("LD", ld(IBUF, 0, a, (1, 1, 1, 4), (0, 0, 0, 1))),
             ("ST", ld(IBUF, 0, out, (1, 1, 1, 4), (0, 0, 0, 0)))], d)
    assert m.ddr[out] == 4


def test_ldch_stch_gather_scatter():
    rng = np.random.default_rng(3)
    full = rng.integers(-127, 128, (6, 5, 2, 3)).astype(np.int8)   # [O, C, KH, KW]
    rows = np.array([4, 0, 3], np.int32)
    chans = np.array([1, 4], np.int32)
    d = DDR()
    a = d.put(full)
    t0 = d.put(rows, "i32")
    t1 = d.put(chans, "i32")
    out = d.put(np.full(full.shape, 99, np.int8))
    st = (30, 6, 3, 1)
    box = (3, 2, 2, 3)
    m = run([("LDCH", ld(WBUF, 0, a, box, st, gather=3, tab0=t0, tab1=t1)),
             ("LDCH", ld(IBUF, 0, a, (3, 5, 2, 3), st, gather=1, tab0=t0)),
             ("STCH", ld(WBUF, 0, out, box, st, gather=3, tab0=t0, tab1=t1))], d)
    exp = np.array([[full[r, c] for c in chans] for r in rows])
    np.testing.assert_array_equal(m.wbuf[:36].reshape(box), exp)
    np.testing.assert_array_equal(m.ibuf[:90].reshape(3, 5, 2, 3), full[rows])
    got = ddr_read(m, out, full.shape)
    ref = np.full(full.shape, 99)
    for r in rows:
        for c in chans:
            ref[r, c] = full[r, c]
    np.testing.assert_array_equal(got, ref)
    # index tables count as DDR reads and are marked in read_map
    assert m.read_map[t0:t0 + 12].all() and m.read_map[t1:t1 + 8].all()
    assert m.counters["ddr_read_bytes"] == 36 + 12 + 8 + 90 + 12 + 12 + 8
    assert m.counters["ddr_write_bytes"] == 36


def test_seed_register():
    d = DDR()
    a = d.put(np.array([0xDEADBEEF], np.uint32).view(np.int32), "i32")
    m = run([("SEED", dict(ddr=a))], d)
    assert m.seed == 0xDEADBEEF
    assert m.counters["SEED"] == 1 and m.counters["ddr_read_bytes"] == 4
