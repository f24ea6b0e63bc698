"""Dynamic Hardtanh/ReLU6 clamps (docs/numerics.md section 8): RQ, VADD and VMASK with
dcl = 1 derive their integer bounds from the result's current exponent; the compiler makes
Hardtanh/ReLU6 registers dynamic; emulator and reference agree step after step while
those exponents move."""
import textwrap

import numpy as np
import pytest
import torch

from edgec.compiler.driver import compile_model
from edgec.compiler.passes.dynfmt import CALM_STEPS, SPAN, exponent_registers
from edgec.compiler.passes.quantize import clamp_at, dynamic_clamp, pass_range_at
from edgec.compiler.reference import run_reference
from edgec.compiler.workflows.floatmodel import quantize_input
from edgec.compiler.workflows.verify import make_batch
from edgec.isa.errors import TrapError

from test_emu_util import ABUF, DDR, IBUF, WBUF, ld, rshift_py, run

XBUF = 3
_ONE = dict(n0=1, n1=1, n2=1, n3=8)


def _vec(d, arr, buf, addr=0):
    arr = np.asarray(arr).reshape(-1)
    wide = buf in (ABUF, XBUF)
    a = d.put(arr, "i32" if wide else "i8")
    return ("LD", ld(buf, addr, a, (1, 1, 1, arr.size), (0, 0, 0, 1), esize=4 if wide else 1))


def _bounds_py(clo, chi, ce, e):
    """The spec text: rshift(c, e - ce, nearest) of both bounds."""
    k = e - ce
    return rshift_py(clo, k, "nearest"), rshift_py(chi, k, "nearest")


# ---------------------------------------------------------------- the instructions
@pytest.mark.parametrize("e", [-8, -6, -5, -4, -3, 0])
def test_rq_dynamic_relu6(e):
    """A ReLU6 (bounds 0 and 6 at ce = -8: 0, 1536) at exponent e: hi = 6 * 2**-e when
    that fits int8, else 127, and then values beyond 127 are saturations."""
    clo, chi, ce = 0, 1536, -8
    v = np.array([-500, 0, 40, 95, 96, 97, 127, 3000], np.int32)
    d = DDR()
    X = [e, 0, 0, 0, 0]
    m = run([_vec(d, X, XBUF), _vec(d, v, ABUF),
             ("RQ", dict(saddr=0, dbuf=IBUF, daddr=0, shift=0, lo=-127, hi=127, dcl=1,
                         clo=clo, chi=chi, ce=ce, xo=0, st=1, xs=2, **_ONE))], d)
    bl, bh = _bounds_py(clo, chi, ce, e)
    lo, hi = max(bl, -127), min(bh, 127)
    assert hi == min(127, 6 * 2 ** -e)
    want = [min(max(max(min(int(x), 127), -127), lo), hi) for x in v]
    assert m.ibuf[:8].tolist() == want
    sat = sum(int(x) > 127 for x in v) if hi == 127 else 0
    assert m.xbuf[2:4].tolist() == [sat, max(abs(q) for q in want)]


def test_vadd_dynamic_hardtanh_standalone():
    """nb=0 (a standalone Hardtanh(-1, 1)) with dcl=1 and dyn=0: only the clamp follows
    X[xo]; both bounds round to nearest (clo = -5, chi = 5 at ce = -3, k = 1: -2, 3)."""
    A = np.array([-127, -3, -2, 0, 2, 3, 4, 127], np.int8)
    d = DDR()
    m = run([_vec(d, [0, -2], XBUF), _vec(d, A, IBUF),
             ("VADD", dict(abuf=IBUF, dbuf=IBUF, daddr=10, count=8, nb=0, lo=-127, hi=127,
                           dcl=1, clo=-5, chi=5, ce=-3, xo=1))], d)
    assert _bounds_py(-5, 5, -3, -2) == (-2, 3)
    assert m.ibuf[10:18].tolist() == [-2, -2, -2, 0, 2, 3, 3, 3]


@pytest.mark.parametrize("e,lo,hi", [(-4, 0, 96), (-3, 0, 48), (-5, 0, 128), (-8, 0, 128)])
def test_vmask_dynamic_pass_range(e, lo, hi):
    """A dynamic ReLU6's backward passes dY where lo < Y < hi, the bounds at X[xo]; a
    bound beyond int8 passes the saturated 127."""
    Y = np.array([-1, 0, 1, 47, 48, 95, 96, 127], np.int8)
    dY = np.arange(1, 9, dtype=np.int8)
    d = DDR()
    m = run([_vec(d, [e], XBUF), _vec(d, dY, IBUF), _vec(d, Y, WBUF),
             ("VMASK", dict(abuf=IBUF, aaddr=0, bbuf=WBUF, baddr=0, dbuf=IBUF, daddr=16,
                            count=8, lo=0, hi=128, dcl=1, clo=0, chi=1536, ce=-8, xo=0))], d)
    assert m.ibuf[16:24].tolist() == [int(a) if lo < y < hi else 0 for a, y in zip(dY, Y)]


@pytest.mark.parametrize("instr", [
    ("RQ", dict(saddr=0, dbuf=IBUF, daddr=0, shift=0, lo=-127, hi=127, dcl=1, clo=0,
                chi=96, ce=-3, xo=0, **_ONE)),
    ("VADD", dict(abuf=IBUF, dbuf=IBUF, daddr=8, count=8, nb=0, lo=-127, hi=127, dcl=1,
                  clo=0, chi=96, ce=-3, xo=0)),
    ("VMASK", dict(abuf=IBUF, bbuf=IBUF, dbuf=IBUF, daddr=8, count=8, lo=0, hi=128, dcl=1,
                   clo=0, chi=96, ce=-3, xo=0)),
])
def test_dynamic_clamp_below_ce_traps(instr):
    d = DDR()
    with pytest.raises(TrapError) as ei:
        run([_vec(d, [-4], XBUF), instr], d)         # X[xo] - ce = -1
    assert ei.value.mnemonic == instr[0] and "X[xo] - ce" in str(ei.value)


# ---------------------------------------------------------------- the compiler
_MODEL = '''
    """ReLU6 fused after a BN, a standalone Hardtanh (its input has two users)."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(4)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 6 * 6, 5)

        def forward(self, x):
            x = nn.functional.relu6(self.bn1(self.conv1(x)))
            y = self.conv2(x)
            z = nn.functional.hardtanh(y, -1.0, 1.0) + y
            return self.fc(torch.flatten(z, 1))

    torch.manual_seed(0)
    model = Net().eval()
    example_input = torch.randn(4, 1, 6, 6)
'''


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    p = tmp_path_factory.mktemp("dynclamp") / "model.py"
    p.write_text(textwrap.dedent(_MODEL))
    return compile_model(str(p), None)


def _clamped(g):
    return [n for n in g.nodes if "dclamp" in n.attrs]


def test_hardtanh_registers_are_dynamic(net):
    g = net.graph
    R = exponent_registers(g)
    ops = {n.op for n in _clamped(g)}
    assert {"hardtanh", "hardtanh_bwd"} <= ops and ops & {"conv", "add"}, ops
    for n in _clamped(g):
        v = n.inputs[1] if n.op == "hardtanh_bwd" else n.outputs[0]
        r, e = R.of[v], g.values[v].exp
        clo, chi, ce = n.attrs["dclamp"]
        assert R.lo[r] < R.e0[r] == e < R.hi[r] and ce == e - SPAN <= R.lo[r]
        assert (clo, chi, ce) == dynamic_clamp(n.attrs.get("act_real") or
                                               [n.attrs["lo"], n.attrs["hi"]], e)
        want = _bounds_py(clo, chi, ce, e)
        if n.op == "hardtanh_bwd":
            assert tuple(n.attrs["pass_range"]) == pass_range_at(n.attrs["dclamp"], e)
            assert pass_range_at((0, 6 * 256, -8), -5) == (0, 128)
        else:
            assert tuple(n.attrs["clamp"]) == clamp_at(n.attrs["dclamp"], e) == \
                (max(want[0], -127), min(want[1], 127))


def _inputs(c, table):
    x, y = make_batch(c, 0)
    inputs = {"x": quantize_input(x, c.graph.values["x"].exp), "labels": y.to(torch.int64),
              "xtab": torch.as_tensor(table, dtype=torch.int64)}
    for name, arr in c.graph.meta["init"].items():
        inputs[name] = torch.from_numpy(np.asarray(arr, dtype=np.int64))
    return inputs


def test_steps_with_moving_clamps_are_bit_exact(net):
    """Steps on one emulator machine against the reference fed its own outputs: every
    symbol equal after every step while the clamped registers move: the ReLU6 output
    planted 3 finer (6 is beyond int8 there: it saturates and coarsens), the Hardtanh
    output planted 2 coarser with a full calm counter (it gets finer)."""
    from edgec.runtime_emu.host import Session, exponent_moves, write_symbol
    c, g = net, net.graph
    R = exponent_registers(g)
    n = R.count
    relu6 = next(x.outputs[0] for x in g.nodes if x.op in ("conv", "add")
                 and "dclamp" in x.attrs)
    ht = next(x.outputs[0] for x in g.nodes if x.op == "hardtanh")
    a, b = R.of[relu6], R.of[ht]
    assert a != b
    t = R.table()
    t[a] = t[n + a] = R.e0[a] - 3
    t[b] = t[n + b] = R.e0[b] + 2
    t[2 * n + b] = CALM_STEPS - 1
    sess = Session(c.program, c.target)
    write_symbol(sess.machine, "xtab", t)
    inputs = _inputs(c, t)
    carry = {x.inputs[i]: x.outputs[i] for x in g.nodes if x.op == "sgd" for i in (0, 1)}
    moves, prev = [], t
    for step in range(4):
        x, y = make_batch(c, step)
        inputs["x"] = quantize_input(x, g.values["x"].exp)
        inputs["labels"] = y.to(torch.int64)
        ref = run_reference(g, inputs, 3 + step)
        out = sess.step(x.numpy(), y.numpy(), seed=3 + step)
        for s in c.program.symbols:
            if s.get("value") in ref:
                r = ref[s["value"]].numpy().reshape(-1)
                e = out[f"sym/{s['name']}"].astype(np.int64).reshape(-1)
                assert np.array_equal(r, e), (step, s["name"])
        moves += exponent_moves(prev, out["xtab"], R.names)
        prev = out["xtab"]
        inputs = {**inputs, "xtab": ref["xtab"],
                  **{v: ref[nv] for v, nv in carry.items()}}
    up = {m["name"] for m in moves if m["new"] > m["old"]}
    down = {m["name"] for m in moves if m["new"] < m["old"]}
    assert R.names[a] in up and R.names[b] in down, (up, down)
