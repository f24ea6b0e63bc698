"""SGD with momentum and weight decay (--momentum, --weight-decay; numerics.md section 4):
emulator vs reference over several steps, the fixed-point update against
torch.optim.SGD, pruned channels untouched, programs without the options unchanged, and
the emulator's traps."""
import numpy as np
import pytest
import torch

from edgec.compiler.driver import compile_model
from edgec.compiler.passes.quantize import UpdatePass
from edgec.compiler.reference import run_reference
from edgec.compiler.workflows.floatmodel import quantize_input
from edgec.compiler.workflows.verify import make_batch, verify
from edgec.isa.encoding import decode_all
from edgec.isa.errors import EdgecError, TrapError

from test_emu_util import ABUF, DDR, IBUF, WBUF, ld, run

LENET = ("examples/lenet/model.py", "examples/lenet/user.mask")
MU, WD = 0.9, 0.01


@pytest.fixture(scope="module")
def lenet_mom():
    return compile_model(*LENET, momentum=MU, weight_decay=WD)


def _inputs(c, batch_seed=0):
    x, y = make_batch(c, batch_seed)
    inputs = {"x": quantize_input(x, c.graph.values["x"].exp), "labels": y.to(torch.int64)}
    for name, arr in c.graph.meta["init"].items():
        inputs[name] = torch.from_numpy(np.asarray(arr, dtype=np.int64))
    return inputs


def _sgd_words(c):
    return [f for ins, f in decode_all(c.program.code) if ins.name == "SGD"]


def test_program_has_momentum_buffers(lenet_mom):
    c = lenet_mom
    trainable = [p.name for p in c.graph.params.values() if p.trainable]
    moms = {s["name"] for s in c.program.symbols if s["kind"] == "mom"}
    assert moms == {f"mom:{p}" for p in trainable}
    words = _sgd_words(c)
    with_grad = [f for f in words if not f["ng"]]
    assert with_grad and all(f["mom"] == 1 for f in with_grad)
    assert all(f["mumul"] == round(MU * 2**16) and f["mushift"] == 16 for f in with_grad)
    assert all(f["wdmul"] > 0 for f in with_grad)


def test_one_step_bit_exact(lenet_mom):
    rep = verify(lenet_mom)
    assert rep.bit_exact, rep.mismatches[:3]
    assert any(k.startswith("mom:") for k in rep.checked)


def _steps(c, nsteps):
    """nsteps on one emulator Session against the reference fed its previous outputs;
    asserts every symbol equal after every step; returns the emulator's outputs."""
    from edgec.runtime_emu.host import Session
    g = c.graph
    sess = Session(c.program, c.target)
    inputs = _inputs(c)
    carry = {}
    for x in g.nodes:
        if x.op == "sgd":
            carry.update({x.inputs[i]: x.outputs[i] for i in (0, 1)})
            if x.attrs.get("mom"):
                carry[x.inputs[3]] = x.outputs[2]
    outs = []
    for step in range(nsteps):
        x, y = make_batch(c, step)
        inputs["x"] = quantize_input(x, g.values["x"].exp)
        inputs["labels"] = y.to(torch.int64)
        ref = run_reference(g, inputs, 11 + step)
        out = sess.step(x.numpy(), y.numpy(), seed=11 + step)
        checked = 0
        for s in c.program.symbols:
            if s.get("value") in ref:
                r = ref[s["value"]].numpy().reshape(-1)
                e = out[f"sym/{s['name']}"].astype(np.int64).reshape(-1)
                assert np.array_equal(r, e), (step, s["name"])
                checked += s["kind"] == "mom"
        assert checked == sum(s["kind"] == "mom" for s in c.program.symbols)
        outs.append(out)
        inputs = {**inputs, "xtab": ref["xtab"], **{v: ref[nv] for v, nv in carry.items()}}
    return outs


def test_steps_bit_exact_and_momentum_persists(lenet_mom):
    c = lenet_mom
    outs = _steps(c, 4)
    V = [o["sym/mom:fc2.weight"].astype(np.int64) for o in outs]
    assert np.count_nonzero(V[0]) > 0
    # the buffer carries over: step 2's V is not what a fresh (zero) buffer would give
    assert not np.array_equal(V[1], V[0]) and not np.array_equal(V[2], V[1])
    # with the options the trajectory differs from plain SGD after the first step
    plain = compile_model(*LENET)
    p_outs = _steps(plain, 2)
    assert not np.array_equal(outs[1]["sym/master:fc2.weight"],
                              p_outs[1]["sym/master:fc2.weight"])


def _view_mask(shape, at):
    """Boolean mask of the elements an sgd's view (out_idx, in_idx, in_block) updates."""
    sel = np.zeros(shape, bool)
    rows = range(shape[0]) if at["out_idx"] is None else at["out_idx"]
    flat = sel.reshape(shape[0], -1)
    per = flat.shape[1] // shape[1] if len(shape) > 1 else 1
    for r in rows:
        if len(shape) == 1 or at["in_idx"] is None:
            flat[r, :] = True
        else:
            blk = at["in_block"] * per
            for b in at["in_idx"]:
                flat[r, b * blk:(b + 1) * blk] = True
    return sel


def test_pruned_channels_never_change(lenet_mom):
    c = lenet_mom
    outs = _steps(c, 3)
    init = c.graph.meta["init"]
    pruned = 0
    for n in c.graph.nodes:
        if n.op != "sgd" or not n.attrs.get("mom"):
            continue
        name = n.inputs[1][len("master:"):]
        keep = _view_mask(tuple(c.graph.values[n.inputs[1]].shape), n.attrs)
        pruned += int((~keep).sum())
        for o in outs:
            V = o[f"sym/mom:{name}"].reshape(keep.shape)
            M = o[f"sym/master:{name}"].reshape(keep.shape)
            P = o[f"sym/param:{name}"].reshape(keep.shape)
            assert not V[~keep].any(), name
            assert np.array_equal(M[~keep], np.asarray(init[f"master:{name}"])[~keep]), name
            assert np.array_equal(P[~keep], np.asarray(init[f"param:{name}"]
                                                       if f"param:{name}" in init else
                                                       init[n.inputs[0]])[~keep]), name
        assert outs[-1][f"sym/mom:{name}"].reshape(keep.shape)[keep].any(), name
    assert pruned > 0          # the mask does prune something


def test_without_options_no_momentum():
    c = compile_model(*LENET)
    assert not any(s["kind"] == "mom" or s["name"].startswith("mom:")
                   for s in c.program.symbols)
    words = _sgd_words(c)
    assert words and all(f["mom"] == 0 and f["vaddr"] == 0 and f["mumul"] == 0
                         and f["wdmul"] == 0 for f in words)
    assert not any(n.attrs.get("mom") for n in c.graph.nodes)
    assert "momentum" not in c.program.meta


def test_options_rejected():
    with pytest.raises(EdgecError, match="momentum"):
        UpdatePass(0.01, momentum=1.0)._mom_attrs()
    with pytest.raises(EdgecError, match="weight"):
        UpdatePass(0.01, weight_decay=-1.0)._mom_attrs()
    assert UpdatePass(0.01)._mom_attrs() == {}
    with pytest.raises(EdgecError, match="adapt-bn"):
        compile_model("examples/mobilenet/model.py", adapt_bn=True, momentum=0.9)


# ------------------------------------------------------------- the instruction itself

def _sgd_program(d, M, Vm, Gs, f):
    """LD M (ABUF 0), V (ABUF 100), one SGD per gradient in Gs (IBUF 8*k)."""
    n = len(M)
    am = d.put(np.asarray(M).reshape(-1), "i32")
    av = d.put(np.asarray(Vm).reshape(-1), "i32")
    ins = [("LD", ld(ABUF, 0, am, (1, 1, 1, n), (0, 0, 0, 1), esize=4)),
           ("LD", ld(ABUF, 100, av, (1, 1, 1, n), (0, 0, 0, 1), esize=4))]
    for k, G in enumerate(Gs):
        ag = d.put(np.asarray(G, np.int8).reshape(-1))
        ins.append(("LD", ld(IBUF, 64 * k, ag, (1, 1, 1, n), (0, 0, 0, 1))))
        ins.append(("SGD", dict(maddr=0, gbuf=IBUF, gaddr=64 * k, dbuf=WBUF, daddr=64 * k,
                                count=n, mom=1, vaddr=100, **f)))
    return ins


def test_tracks_torch_sgd_momentum_weight_decay():
    """Three fixed-point updates of a small Linear weight [4, 6] with given int8 gradients
    against torch.optim.SGD(momentum, weight_decay) fed the same dequantized gradients."""
    rng = np.random.default_rng(5)
    e_m, e_g, lr, mu, wd = -20, -7, 0.05, 0.9, 0.1
    n = 24
    M0 = rng.integers(-2**19, 2**19, n)
    Gs = [rng.integers(-127, 128, n) for _ in range(3)]
    up = UpdatePass(lr, momentum=mu, weight_decay=wd)
    mo = up._mom_attrs()
    lrshift = 16
    lrmul = int(round(lr * 2.0 ** (e_g - e_m + lrshift)))
    f = dict(lrmul=lrmul, lrshift=lrshift, cshift=16, cbits=8, mumul=mo["mumul"],
             mushift=mo["mushift"], wdmul=mo["wdmul"], wdshift=mo["wdshift"])
    d = DDR()
    m = run(_sgd_program(d, M0, np.zeros(n), Gs, f), d)
    M3 = m.abuf[:n].astype(np.int64)
    V3 = m.abuf[100:100 + n].astype(np.int64)

    w = torch.nn.Parameter(torch.tensor(M0 * 2.0 ** e_m, dtype=torch.float64).reshape(4, 6))
    opt = torch.optim.SGD([w], lr=lr, momentum=mu, weight_decay=wd)
    for G in Gs:
        w.grad = torch.tensor(G * 2.0 ** e_g, dtype=torch.float64).reshape(4, 6)
        opt.step()
    wt = w.detach().reshape(-1).numpy()
    buf = opt.state[w]["momentum_buffer"].reshape(-1).numpy()
    moved = np.abs(wt - M0 * 2.0 ** e_m)
    err = np.abs(M3 * 2.0 ** e_m - wt)
    # three roundings per step (half a master unit each), carried through the momentum
    assert np.all(err <= 8 * 2.0 ** e_m + 1e-4 * moved), (err.max(), moved.max())
    assert moved.min() > 100 * 2.0 ** e_m            # the update is far above the rounding
    np.testing.assert_allclose(V3 * 2.0 ** e_m, lr * buf, rtol=1e-4, atol=8 * 2.0 ** e_m)
    # the emulator matches the documented integer recurrence exactly
    Mr, Vr = M0.copy(), np.zeros(n, np.int64)
    rs = lambda v, s: (v + (1 << (s - 1))) >> s        # noqa: E731
    bound = 127 << 16
    for G in Gs:
        Vr = np.clip(rs(Vr * f["mumul"], 16) + rs(G * lrmul, lrshift)
                     + rs(Mr * f["wdmul"], f["wdshift"]), -(2**31 - 1), 2**31 - 1)
        Mr = np.clip(Mr - Vr, -bound, bound)
    assert np.array_equal(Mr, M3) and np.array_equal(Vr, V3)
    assert np.array_equal(m.bufs["WBUF"][128:128 + n], rs(Mr, 16))


@pytest.mark.parametrize("bad,needle", [(dict(mushift=32), "mushift=32"),
                                        (dict(wdshift=40), "wdshift=40"),
                                        (dict(mumul=(1 << 30) + 1), "mumul")])
def test_emulator_traps_on_bad_fields(bad, needle):
    f = dict(lrmul=1000, lrshift=16, cshift=16, cbits=8, mumul=58982, mushift=16,
             wdmul=0, wdshift=0)
    f.update(bad)
    d = DDR()
    with pytest.raises(TrapError) as ei:
        run(_sgd_program(d, np.zeros(4), np.zeros(4), [np.ones(4)], f), d)
    assert needle in str(ei.value) and ei.value.mnemonic == "SGD"


def test_emulator_traps_on_momentum_tile_out_of_abuf():
    f = dict(lrmul=1000, lrshift=16, cshift=16, cbits=8, mumul=58982, mushift=16,
             wdmul=0, wdshift=0)
    d = DDR()
    ins = _sgd_program(d, np.zeros(4), np.zeros(4), [np.ones(4)], f)
    ins[-1][1]["vaddr"] = (1 << 20) - 2
    with pytest.raises(TrapError, match="momentum"):
        run(ins, d)


def test_finetune_keeps_momentum_in_ddr(lenet_mom):
    """edgec finetune's loop: the momentum buffer lives in the session's DDR and moves."""
    from edgec.compiler.workflows.finetune import finetune
    from edgec.runtime_emu.host import read_symbol
    c = lenet_mom
    xs, ys = zip(*(make_batch(c, s) for s in range(2)))
    x, y = torch.cat(xs).numpy(), torch.cat(ys).numpy()
    res = finetune(c, x, y, 2, seed=3)
    V = read_symbol(res.session.machine, "mom:fc2.weight")
    assert V.any()
    res3 = finetune(c, x, y, 3, seed=3)
    assert not np.array_equal(read_symbol(res3.session.machine, "mom:fc2.weight"), V)


def test_dump_resume_keeps_momentum(tmp_path):
    """--dump-ir records momentum and weight decay in the source line; resuming from the
    quantize, update and tile dumps gives the same program bytes."""
    from edgec.compiler.resume import compile_ir
    c = compile_model(*LENET, momentum=MU, weight_decay=WD, dump_ir=str(tmp_path))
    head = (tmp_path / "04-update.ir").read_text().splitlines()[2]
    assert f"momentum={MU}" in head and f"weight_decay={WD}" in head
    for f in ("03-quantize.ir", "04-update.ir", "05-tile.loop"):
        assert compile_ir(str(tmp_path / f)).blob == c.blob, f
    plain = compile_model(*LENET, dump_ir=str(tmp_path / "plain"))
    assert "momentum" not in (tmp_path / "plain" / "04-update.ir").read_text().splitlines()[2]
    assert plain.blob != c.blob
