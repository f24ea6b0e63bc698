"""Dynamic fixed point (docs/numerics.md section 8): exponent registers, their bounds, and
the reference interpreter's rule, checked against the written rule."""
import itertools

import numpy as np
import pytest
import torch

from edgec.compiler.driver import compile_model
from edgec.compiler.passes.dynfmt import CALM_STEPS, SPAN, exponent_registers
from edgec.compiler.reference import run_reference
from edgec.compiler.workflows.floatmodel import quantize_input
from edgec.compiler.workflows.verify import make_batch


@pytest.fixture(scope="module")
def lenet():
    return compile_model("examples/lenet/model.py", "examples/lenet/user.mask")


def _inputs(c, table=None, batch_seed=0):
    x, y = make_batch(c, batch_seed)
    inputs = {"x": quantize_input(x, c.graph.values["x"].exp), "labels": y.to(torch.int64)}
    for name, arr in c.graph.meta["init"].items():
        inputs[name] = torch.from_numpy(np.asarray(arr, dtype=np.int64))
    if table is not None:
        inputs["xtab"] = torch.as_tensor(table, dtype=torch.int64)
    return inputs


def test_registers_share_and_fix(lenet):
    g = lenet.graph
    R = exponent_registers(g)
    for n in g.nodes:             # aliases share their operand's register
        if n.op in ("maxpool", "reshape", "relu_bwd", "maxpool_bwd", "wview") and \
                g.values[n.outputs[0]].dtype == "i8":
            assert R.of[n.outputs[0]] == R.of[n.inputs[0]], n.op
    loss = next(n for n in g.nodes if n.op == "loss_grad")
    for v in ("x", loss.outputs[0]):       # static: the input and the logit error
        r = R.of[v]
        assert R.lo[r] == R.hi[r] == R.e0[r] == g.values[v].exp
    for p in g.params.values():
        if not p.is_bias:
            r = R.of[p.value]
            assert R.lo[r] < R.e0[r] < R.hi[r] and R.thr[r] == 0
            assert R.e0[r] == g.values[p.value].exp
    grads = {g.outputs[k] for k in g.outputs if k.startswith("grad:")}
    for v in grads:
        assert R.thr[R.of[v]] == 0
    conv = next(n for n in g.nodes if n.op == "conv")
    r = R.of[conv.outputs[0]]
    assert R.thr[r] == int(np.prod(g.values[conv.outputs[0]].shape)) // 256 > 0
    for b, (rx, rw) in R.bias.items():      # a bias lives at e_x + e_w of its conv
        assert g.values[b].exp == R.e0[rx] + R.e0[rw]
    t = R.table()
    assert list(t[:R.count]) == R.e0 and list(t[R.count:2 * R.count]) == R.e0
    assert not t[2 * R.count:7 * R.count].any()


def test_bounds_keep_every_shift_in_range(lenet):
    """Every MAC/add shift and every update's learning-rate shift stays legal at every
    corner of the registers' [lo, hi] box (checked here from the graph, not via
    dynfmt's own constraint list)."""
    g = lenet.graph
    V = g.values
    R = exponent_registers(g)
    box = lambda regs: itertools.product(*[(R.lo[r], R.hi[r]) for r in regs])  # noqa
    seen = 0
    for n in g.nodes:
        if n.op in ("conv", "linear", "conv_eb", "linear_eb", "conv_wg", "linear_wg"):
            regs = [R.of[v] for v in (n.outputs[0], *n.inputs[:2])]
            assert all(-31 <= o - a - b <= 31 for o, a, b in box(regs))
            seen += 1
        elif n.op == "sgd" and len(n.inputs) == 3:
            r = R.of[n.inputs[2]]
            base = n.attrs["lrshift"] + V[n.inputs[2]].exp
            assert all(0 <= base - e <= 31 for (e,) in box([r]))
    assert seen >= 10
    # the spans are as wide as allowed unless a shift forced them in
    assert max(R.hi[r] - R.e0[r] for r in range(R.count)) == SPAN


def test_softmax_tables_cover_the_logit_exponents(lenet):
    g = lenet.graph
    loss = next(n for n in g.nodes if n.op == "loss_grad")
    R = exponent_registers(g)
    r = R.of[loss.inputs[0]]
    lut = g.consts[loss.attrs["lut"]]
    assert len(lut) == 256 * loss.attrs["nlut"]
    assert loss.attrs["lut_lo"] <= R.lo[r] and R.hi[r] < loss.attrs["lut_lo"] + loss.attrs["nlut"]
    for j in range(loss.attrs["nlut"]):       # table j: LUT[d] = 2^15 exp(-d 2^e)
        e = loss.attrs["lut_lo"] + j
        assert lut[256 * j + 1] == round(2**15 * np.exp(-2.0**e))


def _rule(E, C, S, Q, lo, hi, thr):
    """numerics.md section 8, written out for one register."""
    if S > thr:
        E, C = E + 1, 0
    elif Q < 64:
        C += 1
        if C >= CALM_STEPS:
            E, C = E - 1, 0
    else:
        C = 0
    return min(max(E, lo), hi), C


def test_reference_applies_the_rule(lenet):
    """A table with planted statistics and calm counters moves as the rule says; the
    step's own statistics are added to the planted ones; SGD derives the new compute
    copies at the moved exponents."""
    g = lenet.graph
    R = exponent_registers(g)
    n = R.count
    t = R.table().astype(np.int64)
    conv = next(x for x in g.nodes if x.op == "conv")
    act = R.of[conv.outputs[0]]
    w = R.of[conv.inputs[1]]
    t[3 * n + 2 * act] = 10**6                 # planted saturations: must coarsen
    t[2 * n + w] = CALM_STEPS - 1              # one calm step short: must get finer
    top = R.of[g.outputs["logits"]]
    t[8 * n + top] = t[top]                     # its bound: cannot coarsen
    t[3 * n + 2 * top] = 10**6
    ref = run_reference(g, _inputs(lenet, t), 0)
    out = ref["xtab"].numpy()
    # an independent replay: the step's statistics are the same as with the plain table
    plain = run_reference(g, _inputs(lenet), 0)["xtab"].numpy()
    for r in range(n):
        S = int(t[3 * n + 2 * r]) + int(plain[5 * n + 2 * r])
        Q = max(int(t[3 * n + 2 * r + 1]), int(plain[5 * n + 2 * r + 1]))
        E, C = _rule(int(t[r]), int(t[2 * n + r]), S, Q, int(t[7 * n + r]),
                     int(t[8 * n + r]), int(t[9 * n + r]))
        assert out[n + r] == t[r], r                 # P: the exponent before the move
        assert (out[r], out[2 * n + r]) == (E, C), R.names[r]
        assert (out[5 * n + 2 * r], out[5 * n + 2 * r + 1]) == (S, Q)
    assert out[act] == R.e0[act] + 1 and out[w] == R.e0[w] - 1 and out[top] == R.e0[top]
    # the weight's new compute copy: sat8(rshift(M', 16 - 1)) at the finer exponent
    name = g.param_of_value(conv.inputs[1]) or g.param_of_value(
        g.producer(conv.inputs[1]).inputs[0])
    sgd = next(x for x in g.nodes if x.op == "sgd" and x.inputs[0] == name.value)
    rows = sgd.attrs["out_idx"] or list(range(name.shape[0]))     # the kept channels
    Mn = ref[f"newmaster:{name.name}"][rows]
    cshift = out[w] - g.values[f"master:{name.name}"].exp
    want = ((Mn + (1 << (int(cshift) - 1))) >> int(cshift)).clamp(-127, 127)
    assert torch.equal(ref[f"new:{name.name}"][rows], want)
    assert cshift == 15
    # statistics rows after the move hold only what the updates counted (weights)
    for r in range(n):
        if r not in {R.of[p.value] for p in g.params.values() if p.trainable and not p.is_bias}:
            assert out[3 * n + 2 * r] == out[3 * n + 2 * r + 1] == 0


def test_static_step_is_unchanged_at_the_initial_table(lenet):
    """At the compile-time table the dynamic shifts equal the static ones: the forward
    and backward tensors equal a run of the same graph with its table given explicitly
    and with every register's move disabled (lo = hi)."""
    g = lenet.graph
    R = exponent_registers(g)
    n = R.count
    t = R.table().astype(np.int64)
    t[7 * n:8 * n] = t[:n]
    t[8 * n:9 * n] = t[:n]
    a = run_reference(g, _inputs(lenet), 0)
    b = run_reference(g, _inputs(lenet, t), 0)
    for v in g.values:
        if not v.startswith(("new:", "newmaster:")) and v in a:
            assert torch.equal(a[v], b[v]), v
    assert (b["xtab"][:n] == torch.as_tensor(R.e0)).all()


def test_steps_with_moves_are_bit_exact(lenet):
    """Several steps on one emulator machine against the reference interpreter fed its own
    previous outputs: every symbol equal after every step, while exponents move both ways
    (a planted too-fine activation coarsens, a planted calm counter makes a weight finer)."""
    from edgec.runtime_emu.host import Session, exponent_moves, write_symbol
    c, g = lenet, lenet.graph
    R = exponent_registers(g)
    n = R.count
    t = R.table()
    conv = next(x for x in g.nodes if x.op == "conv")
    act, w = R.of[conv.outputs[0]], R.of[conv.inputs[1]]
    t[act] = t[n + act] = R.e0[act] - 2                 # saturates: moves back up
    t[2 * n + w] = CALM_STEPS - 1
    sess = Session(c.program, c.target)
    write_symbol(sess.machine, "xtab", t)
    inputs = _inputs(c, t)
    carry = {x.inputs[i]: x.outputs[i] for x in g.nodes if x.op == "sgd" for i in (0, 1)}
    moves, prev = [], t
    for step in range(4):
        x, y = make_batch(c, step)
        inputs["x"] = quantize_input(x, g.values["x"].exp)
        inputs["labels"] = y.to(torch.int64)
        ref = run_reference(g, inputs, 7 + step)
        out = sess.step(x.numpy(), y.numpy(), seed=7 + step)
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
    assert R.names[act] in up and R.names[w] in down
