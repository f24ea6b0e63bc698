"""Host I/O through the symbol table, input quantization and run_step's out.npz content."""
import math

import numpy as np
import pytest

from edgec.isa.errors import EdgecError
from edgec.runtime_emu.host import (quantize_input, read_real, read_symbol, run_step,
                                    write_symbol)
from edgec.runtime_emu.machine import Machine

from test_emu_util import DDR, IBUF, TARGET, WBUF, build, ld, rshift_py, sat_py

N, F, K = 3, 6, 4
E_X, E_W, E_Z = -5, -6, -3


def _program():
    rng = np.random.default_rng(0)
    d = DDR()
    w = rng.integers(-127, 128, (K, F)).astype(np.int8)
    ax = d.reserve(N * F, "in:x", [N, F], exp=E_X)
    d.reserve(4 * N, "in:labels", [N], dtype="i32")
    asd = d.reserve(4, "rng_seed", [1], dtype="i32")
    aw = d.put(w, "i8", "fc.weight", E_W)
    d.put(w.astype(np.int32) << 16, "i32", "fc.weight:master", E_W - 16)
    az = d.reserve(N * K, "logits", [N, K], exp=E_Z)
    # a conv parameter [4,3,2,2] with a compacted gradient for rows {1,3}, channels {0,2}
    d.put(np.arange(48, dtype=np.int32).reshape(4, 3, 2, 2) * 3, "i32", "conv.weight:master", -10)
    d.put(np.arange(1, 17, dtype=np.int8).reshape(2, 2, 2, 2), "i8", "conv.weight:grad", -7)
    d.put(np.array([1, 3], np.int32), "i32", "conv.out")
    d.put(np.array([0, 2], np.int32), "i32", "conv.in")
    # a linear after a flatten: [2, 3*4] with kept channels {2, 0} of 3, blocks of 4
    d.put(np.zeros((2, 12), np.int32), "i32", "lin.weight:master", -12)
    d.put(np.arange(-8, 8, dtype=np.int8).reshape(2, 8), "i8", "lin.weight:grad", -5)
    d.put(np.array([2, 0], np.int32), "i32", "lin.in")
    meta = {"logits": "logits", "params": [
        {"name": "fc.weight", "shape": [K, F], "master": "fc.weight:master", "grad": None,
         "out_tab": None, "in_tab": None, "in_block": 1},
        {"name": "conv.weight", "shape": [4, 3, 2, 2], "master": "conv.weight:master",
         "grad": "conv.weight:grad", "out_tab": "conv.out", "in_tab": "conv.in", "in_block": 1},
        {"name": "lin.weight", "shape": [2, 12], "master": "lin.weight:master",
         "grad": "lin.weight:grad", "out_tab": None, "in_tab": "lin.in", "in_block": 4},
    ]}
    shift = -(E_Z - E_X - E_W)        # e_y = e_acc + shift
    prog = [("SEED", dict(ddr=asd)),
            ("LD", ld(IBUF, 0, ax, (N, F, 1, 1), (F, 1, 0, 0))),
            ("LD", ld(WBUF, 0, aw, (K, F, 1, 1), (F, 1, 0, 0))),
            ("MAC", dict(pattern=0, abuf=IBUF, aaddr=0, bbuf=WBUF, baddr=0, caddr=0, n=N, ci=F,
                         co=K, xh=1, xw=1, yh=1, yw=1, kh=1, kw=1, sh=1, sw=1, g=1)),
            ("RQ", dict(saddr=0, dbuf=IBUF, daddr=100, n0=1, n1=1, n2=N, n3=K, shift=shift,
                        lo=-127, hi=127)),
            ("ST", ld(IBUF, 100, az, (1, 1, N, K), (0, 0, K, 1)))]
    return build(prog, d, meta=meta), w, shift


def test_quantize_input():
    q = quantize_input(np.array([0.5, 1.5, 2.5, -0.5, -2.5, 1000.0, -1000.0, 0.26]), 0)
    assert q.dtype == np.int8
    assert q.tolist() == [0, 2, 2, 0, -2, 127, -127, 0]
    assert quantize_input(np.array([0.75]), -2).tolist() == [3]
    assert quantize_input(np.array([[0.375]]), -3, shape=(1, 1)).tolist() == [[3]]
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(EdgecError, match="finite"):
            quantize_input(np.array([0.0, bad]), 0)
    with pytest.raises(EdgecError, match="shape"):
        quantize_input(np.zeros((2, 2)), 0, shape=(2, 3))


def test_read_write_symbol():
    p, w, _ = _program()
    m = Machine(p, TARGET)
    np.testing.assert_array_equal(read_symbol(m, "fc.weight"), w)
    assert read_symbol(m, "fc.weight").dtype == np.int8
    write_symbol(m, "in:labels", np.array([1, -5, 2**31 - 1]))
    assert read_symbol(m, "in:labels").tolist() == [1, -5, 2**31 - 1]
    assert read_symbol(m, "in:labels").dtype == np.int32
    with pytest.raises(EdgecError, match="shape"):
        write_symbol(m, "in:labels", np.zeros(4, np.int32))
    with pytest.raises(EdgecError, match="outside"):
        write_symbol(m, "in:x", np.full((N, F), 128))
    with pytest.raises(EdgecError, match="outside"):
        write_symbol(m, "in:x", np.full((N, F), -128))
    with pytest.raises(EdgecError, match="no symbol"):
        read_symbol(m, "nope")


@pytest.mark.parametrize("exp", [-160, -150, -126, -30, -7, 0, 5, 96, 128])
def test_read_real_rounds_once_like_float64(exp):
    # zero and int32 values past float32's 24-bit mantissa (a tie), at exponents inside
    # and outside the float32 fast path's range (where 2**exp itself under- or overflows
    # float32): the same as exact float64, rounded once
    p, _, _ = _program()
    m = Machine(p, TARGET)
    rng = np.random.default_rng(exp + 200)
    v = rng.integers(-(2**31 - 1), 2**31 - 1, N, dtype=np.int64)
    v[:3] = [0, 2**24 + 1, -(2**31 - 1)]          # zero, a tie, the extreme (N == 3)
    write_symbol(m, "in:labels", v)
    sym = next(s for s in p.symbols if s["name"] == "in:labels")
    sym["exp"] = exp
    with np.errstate(over="ignore"):                # exp 128: inf, in both
        want = (v.astype(np.float64) * 2.0 ** exp).astype(np.float32)
        got = read_real(m, "in:labels")
    assert got.dtype == np.float32
    assert got.tobytes() == want.tobytes()


def test_run_step_outputs():
    p, w, shift = _program()
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (N, F)).astype(np.float32)
    labels = np.array([3, 0, 2], np.int64)
    out, m = run_step(p, TARGET, x, labels, seed=0xFFFFFFFE)
    assert m.seed == 0xFFFFFFFE and m.counters["END"] == 1
    xq = [[sat_py(round(float(v) * 2**-E_X)) for v in row] for row in x.astype(np.float64)]
    z = [[sat_py(rshift_py(sum(xq[n][f] * int(w[k, f]) for f in range(F)), shift, "nearest"))
          for k in range(K)] for n in range(N)]
    np.testing.assert_array_equal(out["sym/logits"], z)
    np.testing.assert_array_equal(out["sym/in:x"], xq)
    zr = np.array(z, np.float64) * 2.0**E_Z
    assert out["logits"].dtype == np.float32
    np.testing.assert_array_equal(out["logits"], zr.astype(np.float32))
    loss = sum(math.log(sum(math.exp(v) for v in zr[n])) - zr[n, labels[n]]
               for n in range(N)) / N
    assert out["loss"].dtype == np.float32 and out["loss"].shape == ()
    assert float(out["loss"]) == np.float32(loss)
    np.testing.assert_array_equal(out["param/fc.weight"], w.astype(np.float32) * 2.0**E_W)
    assert (out["grad/fc.weight"] == 0).all() and out["grad/fc.weight"].shape == (K, F)
    # conv: compacted [2,2,2,2] lands on rows {1,3} x channels {0,2}
    gc = np.arange(1, 17).reshape(2, 2, 2, 2) * 2.0**-7
    ref = np.zeros((4, 3, 2, 2))
    for i, r in enumerate([1, 3]):
        for j, c in enumerate([0, 2]):
            ref[r, c] = gc[i, j]
    np.testing.assert_array_equal(out["grad/conv.weight"], ref.astype(np.float32))
    np.testing.assert_array_equal(out["param/conv.weight"],
                                  (np.arange(48).reshape(4, 3, 2, 2) * 3 * 2.0**-10)
                                  .astype(np.float32))
    # lin: compacted [2, 8] = 2 kept channels (2 then 0) x 4 elements each
    gl = np.arange(-8, 8).reshape(2, 8) * 2.0**-5
    ref = np.zeros((2, 12))
    ref[:, 8:12] = gl[:, 0:4]
    ref[:, 0:4] = gl[:, 4:8]
    np.testing.assert_array_equal(out["grad/lin.weight"], ref.astype(np.float32))
    assert {k for k in out if k.startswith("sym/")} == {f"sym/{s['name']}" for s in p.symbols}
    assert out["sym/rng_seed"].tolist() == [np.uint32(0xFFFFFFFE).astype(np.int32)]


def test_run_step_input_errors():
    p, _, _ = _program()
    x = np.zeros((N, F), np.float32)
    with pytest.raises(EdgecError, match=r"label 1 is 4, outside \[0, 4\)"):
        run_step(p, TARGET, x, np.array([0, 4, 1]))
    with pytest.raises(EdgecError, match="shape"):
        run_step(p, TARGET, np.zeros((N, F + 1)), np.array([0, 1, 1]))
    with pytest.raises(EdgecError, match="shape"):
        run_step(p, TARGET, x, np.array([0, 1]))
    bad = x.copy()
    bad[1, 2] = np.nan
    with pytest.raises(EdgecError, match=r"\[1, 2\]"):
        run_step(p, TARGET, bad, np.array([0, 1, 1]))
    with pytest.raises(EdgecError, match="uint32"):
        run_step(p, TARGET, x, np.array([0, 1, 1]), seed=2**32)
    out, m = run_step(p, TARGET, x, np.array([0, 1, 1]))      # no seed: register from DDR (0)
    assert m.seed == 0
