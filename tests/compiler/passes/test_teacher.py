"""Teacher targets compiled into the program (--labels pseudo, --loss kd): the integer
LOSST method against an element-by-element reading of docs/numerics.md and against float
autograd; whole programs bit-exact (emulator vs reference) with gradients close to float
autograd; the teacher stays frozen across steps; CLI errors."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from edgec.compiler.workflows.cli import main
from edgec.compiler.driver import compile_model
from edgec.compiler.workflows.finetune import finetune
from edgec.compiler.reference import teacher_loss_grad
from edgec.compiler.workflows.verify import verify
from edgec.runtime_emu.host import Session, read_symbol
from test_emu_util import DDR, IBUF, rshift_py, run, sat_py
from test_emu_vector import _load_abuf, _load_i8

ROOT = Path(__file__).resolve().parents[3]
MODEL = str(ROOT / "examples" / "personalize" / "model.py")
MASK = str(ROOT / "examples" / "personalize" / "user.mask")

N, K, E_Z, E_T = 8, 10, -4, -3        # e_dz = expo(1/N) = -10


def _lut(e, temp=1.0):
    return [round(2**15 * math.exp(-d * 2.0**e / temp)) for d in range(256)]


def _logits(seed):
    rng = np.random.default_rng(seed)
    z = rng.integers(-60, 61, (N, K)).astype(np.int8)
    t = rng.integers(-60, 61, (N, K)).astype(np.int8)
    t[0, :] = 5                    # a tie everywhere: label 0, confidence 1/K
    t[1, 3] = t[1, 7] = 100        # a tie between two maxima: the first (3) wins
    t[2, 2] = 127                  # a confident row
    t[2, 5] = -127                 # max - t = 254
    return z, t


def _expected(z, t, lut, tlut, rmul, shift, kd, thresh):
    """docs/numerics.md, element by element in Python integers."""
    out = np.zeros((N, K), np.int64)
    for n in range(N):
        zm, tm = max(map(int, z[n])), max(map(int, t[n]))
        E = [lut[zm - int(v)] for v in z[n]]
        F = [tlut[tm - int(v)] for v in t[n]]
        S, ST = sum(E), sum(F)
        a = [int(v) for v in t[n]].index(tm)
        for k in range(K):
            P = E[k] * 2**15 // S
            if kd:
                G = P - F[k] * 2**15 // ST
            else:
                G = P - 2**15 * (k == a) if 2**30 >= thresh * ST else 0
            out[n, k] = sat_py(rshift_py(G * rmul, shift, "nearest"))
    return out


@pytest.mark.parametrize("kd,thresh,temp", [(0, 0, 1.0), (0, 16384, 1.0), (0, 30000, 1.0),
                                            (1, 0, 1.0), (1, 0, 4.0), (1, 0, 0.5)])
def test_losst_emulator_and_reference_follow_the_spec(kd, thresh, temp):
    z, t = _logits(7 + kd + thresh)
    lut, tlut = _lut(E_Z, temp), _lut(E_T, temp)
    rmul, shift = round(2**16 / N), 31 + (-7 - math.ceil(math.log2(N)))
    d = DDR()
    m = run([_load_i8(d, z, IBUF, 0), _load_i8(d, t, IBUF, 100), _load_abuf(d, lut, 0),
             _load_abuf(d, tlut, 300),
             ("LOSST", dict(zbuf=IBUF, zaddr=0, tbuf=IBUF, taddr=100, lutaddr=0,
                            tlutaddr=300, dbuf=IBUF, daddr=200, n=N, k=K, rmul=rmul,
                            shift=shift, kd=kd, thresh=thresh))], d)
    got = m.ibuf[200:200 + N * K].reshape(N, K).astype(np.int64)
    want = _expected(z, t, lut, tlut, rmul, shift, kd, thresh)
    np.testing.assert_array_equal(got, want)
    ref = teacher_loss_grad(torch.from_numpy(z.astype(np.int64)),
                            torch.from_numpy(t.astype(np.int64)),
                            torch.tensor(lut), torch.tensor(tlut), rmul, shift, bool(kd),
                            thresh).numpy()
    np.testing.assert_array_equal(ref, want)
    if not kd:
        assert (got[0] == 0).all() == (thresh > 2**15 // K)      # ties: confidence 1/K
        if thresh == 0:                                          # first maximum is the label
            assert got[1, 3] < 0 and got[1, 7] >= 0
        else:                                                    # two maxima: p_max < 1/2
            assert (got[1] == 0).all()
        assert got[2, 2] < 0


@pytest.mark.parametrize("kd,temp", [(0, 1.0), (1, 1.0), (1, 2.0)])
def test_losst_gradient_matches_float_autograd(kd, temp):
    """Real value of the integer gradient vs torch autograd of the float loss."""
    z, t = _logits(3)
    lut, tlut = _lut(E_Z, temp), _lut(E_T, temp)
    rmul, e_dz = round(2**16 / N), -7 - math.ceil(math.log2(N))
    q = teacher_loss_grad(torch.from_numpy(z.astype(np.int64)),
                          torch.from_numpy(t.astype(np.int64)), torch.tensor(lut),
                          torch.tensor(tlut), rmul, 31 + e_dz, bool(kd), 0).double()
    zr = torch.tensor(z, dtype=torch.float64) * 2.0**E_Z
    zr.requires_grad_(True)
    tr = torch.tensor(t, dtype=torch.float64) * 2.0**E_T
    F = torch.nn.functional
    if kd:
        loss = temp * -(torch.softmax(tr / temp, 1) * F.log_softmax(zr / temp, 1)).sum(1).mean()
    else:
        loss = F.cross_entropy(zr, tr.argmax(1))
    loss.backward()
    g = zr.grad.reshape(-1)
    got = (q * 2.0**e_dz).reshape(-1)
    cos = float(g @ got / (g.norm() * got.norm()))
    err = float((g - got).abs().max()) / 2.0**e_dz
    assert cos > 0.99 and err <= 1.0, (cos, err)      # within one step of the int8 output


@pytest.fixture(scope="module", params=[{"target": "pseudo", "threshold": 0.5},
                                        {"target": "kd", "temp": 2.0}], ids=["pseudo", "kd"])
def prog(request):
    return compile_model(MODEL, MASK, lr=0.02, teacher=request.param)


@pytest.mark.slow
def test_teacher_program_bit_exact_and_close_to_float_autograd(prog):
    rep = verify(prog)
    assert rep.bit_exact, rep.mismatches[:3]
    assert any(s.startswith("teacher.") for s in rep.checked)      # teacher tensors compared
    cos = {name: c for name, c, _ in rep.fidelity}
    assert len(cos) == 10 and min(cos.values()) > 0.99, cos


def test_teacher_is_frozen_and_unmasked(prog):
    g = prog.graph
    tparams = [p for p in g.params.values() if p.name.startswith("teacher:")]
    assert {p.name for p in tparams} == {f"teacher:{p['name']}" for p in
                                          prog.program.meta["params"]}
    assert not any(p.trainable for p in tparams)
    assert not any(n.op == "wview" and n.inputs[0].startswith("param:teacher:")
                   for n in g.nodes)
    tz = prog.program.meta["teacher_logits"]
    assert prog.program.symbol(tz)["shape"] == [16, 10]
    rng = np.random.default_rng(0)
    x = rng.random((32, 1, 8, 8), dtype=np.float32)
    res = finetune(prog, x, None, 2)
    m = res.session.machine
    fresh = Session(prog.program, prog.target).machine
    for p in tparams:                                   # teacher weights never change
        np.testing.assert_array_equal(read_symbol(m, f"param:{p.name}"),
                                      read_symbol(fresh, f"param:{p.name}"))
    name = prog.program.meta["params"][0]["name"]       # the student's do
    assert not np.array_equal(read_symbol(m, f"param:{name}"),
                              read_symbol(fresh, f"param:{name}"))
    assert all(np.isfinite(res.losses))


@pytest.mark.slow
def test_cli_verify_pseudo_and_flag_errors(tmp_path, capsys):
    assert main(["verify", MODEL, "--mask", MASK, "--labels", "pseudo", "--threshold",
                 "0.7", "-q"]) == 0
    assert "result: BIT-EXACT" in capsys.readouterr().out
    for bad, msg in ((["--labels", "pseudo", "--loss", "kd"], "drop --labels pseudo"),
                     (["--loss", "kd", "--temperature", "3"], "power of two"),
                     (["--labels", "pseudo", "--threshold", "1.5"], "--threshold must be"),
                     (["--threshold", "0.5"], "--labels pseudo only"),
                     (["--labels", "pseudo", "--classes", "0,1"], "--classes")):
        out = tmp_path / "p.bin"
        assert main(["compile", MODEL, "-q", "-o", str(out), *bad]) == 1
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, (bad, err)
        assert not out.exists()
