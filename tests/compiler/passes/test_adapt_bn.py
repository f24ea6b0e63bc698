"""--adapt-bn: BatchNorm statistics re-estimated on the device.

CSTAT/BNADAPT against exact rational arithmetic, the adapt-bn program bit-exact against
the reference interpreter and close to float32 PyTorch batch statistics, and the CLI."""
import math
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch

from edgec.compiler.workflows.adapt import adapt_bn, float_adapted
from edgec.compiler.driver import compile_model
from edgec.compiler.workflows.verify import verify
from edgec.isa.errors import EdgecError

from test_emu_util import ABUF, DDR, IBUF, WBUF, ld, run

MODEL = '''
import torch
import torch.nn as nn

torch.manual_seed(0)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)   # BN mean folded: mode 0
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)              # own bias: BN shift, mode 1
        self.bn2 = nn.BatchNorm2d(12)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(self.pool(x).flatten(1))


model = Net()
model.train()
with torch.no_grad():          # source-domain statistics: standard normal images
    for bn in (model.bn1, model.bn2):
        bn.momentum = None
    for i in range(4):
        model(torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(i)))
model.eval()
example_input = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(9))
'''


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("adapt")
    (d / "model.py").write_text(MODEL)
    (d / "user.mask").write_text("conv1: 0-2, 4, 6\n")
    return d


def _rdiv(a: Fraction) -> int:
    return math.floor(a + Fraction(1, 2))


@pytest.mark.parametrize("mode,d,p,m", [(0, 3, 9, 0), (0, -2, 12, 1), (1, 1, 10, 2),
                                        (1, -3, -1, 0)])
def test_cstat_bnadapt_exact(mode, d, p, m):
    rng = np.random.default_rng(7 + mode + 10 * m)
    n, c, hw = 3, 5, 7
    x = rng.integers(-128, 128, (n, c, hw))
    x[0, 0] = 0            # a channel with a small variance
    b = rng.integers(-5000, 5000, c)
    q = rng.integers(0, 128, c)
    eps = 37
    dd = DDR()
    xa, ba, qa = dd.put(x.astype(np.int8)), dd.put(b.astype(np.int32), "i32"), \
        dd.put(q.astype(np.int8))
    prog = [("LD", ld(IBUF, 0, xa, (1, 1, 1, x.size), (0, 0, 0, 1))),
            ("CSTAT", dict(sbuf=IBUF, saddr=0, daddr=0, n=1, c=c, hw=hw, acc=0)),  # n=0 tile
            ("CSTAT", dict(sbuf=IBUF, saddr=c * hw, daddr=0, n=n - 1, c=c, hw=hw, acc=1)),
            ("LD", ld(ABUF, 2 * c, ba, (1, 1, 1, c), (0, 0, 0, 1), esize=4)),
            ("LD", ld(WBUF, 0, qa, (1, 1, 1, c), (0, 0, 0, 1))),
            ("BNADAPT", dict(saddr=0, baddr=2 * c, qbuf=WBUF, qaddr=0, c=c, cnt=n * hw,
                             mode=mode, d=d, p=p, eps=eps, m=m))]
    mach = run(prog, dd)
    s1, s2 = x.sum(axis=(0, 2)), (x * x).sum(axis=(0, 2))
    cnt = n * hw
    assert [int(v) for v in mach.abuf[:2 * c]] == [*map(int, s1), *map(int, s2)]
    for k in range(c):
        var = Fraction(int(s2[k]) * cnt - int(s1[k]) ** 2 + eps, cnt * cnt)
        # qb = round(2^p / sqrt(var)): compare squares, exactly
        qb = 0
        while qb < 127 and Fraction(2 * qb + 1, 2) ** 2 * var <= Fraction(2) ** (2 * p):
            qb += 1
        assert int(mach.wbuf[k]) == int(q[k]) + _rdiv(Fraction(qb - int(q[k]), 2 ** m))
        mean = Fraction(int(s1[k]), cnt) * Fraction(2) ** d
        if mode == 0:
            want = int(b[k]) - _rdiv(mean / 2 ** m)
        else:
            tb = -_rdiv(mean * qb)
            want = int(b[k]) + _rdiv(Fraction(tb - int(b[k]), 2 ** m))
        assert int(mach.abuf[2 * c + k]) == want


@pytest.mark.parametrize("mask", [None, "user.mask"])
def test_adapt_program_bit_exact_and_close_to_float(model_path, mask):
    c = compile_model(str(model_path / "model.py"),
                      str(model_path / mask) if mask else None, adapt_bn=True)
    assert {n.attrs["mode"] for n in c.graph.nodes if n.op == "bn_adapt"} == {0, 1}
    assert not c.program.meta["params"]           # nothing is trained
    rep = verify(c)
    assert rep.bit_exact, rep.mismatches[:3]
    stats = dict((name, (cos, rel)) for name, cos, rel in rep.fidelity)
    assert set(stats) == {f"bn{i}.running_{s}" for i in (1, 2) for s in ("mean", "var")}
    for name, (cos, rel) in stats.items():
        assert cos > 0.99 and rel < 0.1, (name, cos, rel)


def test_adaptation_follows_a_shifted_domain(model_path):
    """Several runs on shifted data: the device's statistics approach PyTorch's batch
    statistics of that data (the float oracle, iterated the same way)."""
    c = compile_model(str(model_path / "model.py"), None, adapt_bn=True)
    x = (torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 1.3
         + 0.3).numpy()
    res = adapt_bn(c, x, steps=6)
    model = c.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:                 # the float oracle, iterated: each run starts from the last one's
        for _ in range(6):
            want = float_adapted(c, torch.from_numpy(x))
            for mod, (mean, var) in want.items():
                bn = model.get_submodule(mod)
                bn.running_mean.copy_(torch.from_numpy(mean))
                bn.running_var.copy_(torch.from_numpy(var))
    finally:
        model.load_state_dict(before)
    for mod, (mean, var) in want.items():
        got_m, got_v = res.stats[mod]
        src_m = before[f"{mod}.running_mean"].numpy()
        src_v = before[f"{mod}.running_var"].numpy()
        if mod == "bn1":        # the input's shift shows here (bn1 normalises it away)
            assert np.abs(var - src_v).max() > 0.2 * var.max()
            # most of the way there; what is left is the int8 range of the activations,
            # whose exponents were calibrated on the source domain (beyond it: saturation)
            assert np.linalg.norm(got_m - mean) < 0.25 * np.linalg.norm(src_m - mean)
            assert np.linalg.norm(got_v - var) < 0.5 * np.linalg.norm(src_v - var)
        assert np.abs(got_m - mean).max() < 0.1 * np.abs(mean).max() + 0.02
        assert np.abs(got_v - var).max() < 0.2 * var.max()
    # the state_dict loads into the original model and carries the adapted statistics
    m2 = type(model)()
    m2.load_state_dict(res.state_dict)
    assert torch.allclose(m2.bn2.running_var, torch.from_numpy(res.stats["bn2"][1]))


@pytest.mark.slow
def test_adapt_errors(model_path, tmp_path):
    with pytest.raises(EdgecError, match="no BatchNorm2d"):
        compile_model("examples/lenet/model.py", None, adapt_bn=True)
    with pytest.raises(EdgecError, match="does not combine"):
        compile_model(str(model_path / "model.py"), None, adapt_bn=True, train=("fc.*",))
    out = tmp_path / "t.pt"
    np.savez(tmp_path / "bad.npz", x=np.zeros((8, 1, 4, 4), np.float32))
    r = subprocess.run([sys.executable, "-m", "edgec.compiler.workflows.cli", "finetune",
                        str(model_path / "model.py"), "--adapt-bn", "--data",
                        str(tmp_path / "bad.npz"), "--steps", "2", "-q", "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "bad.npz" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


@pytest.mark.slow
def test_cli_finetune_adapt_bn(model_path, tmp_path):
    x = (np.random.default_rng(0).standard_normal((32, 1, 8, 8)) * 1.3 + 0.3)
    np.savez(tmp_path / "u.npz", x=x.astype(np.float32))      # no labels
    out = tmp_path / "bn.pt"
    r = subprocess.run([sys.executable, "-m", "edgec.compiler.workflows.cli", "finetune",
                        str(model_path / "model.py"), "--mask", str(model_path / "user.mask"),
                        "--adapt-bn", "--data", str(tmp_path / "u.npz"), "--steps", "3",
                        "-q", "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "3 BatchNorm adaptation runs" in r.stdout
    sd = torch.load(out)
    assert sd["bn1.running_var"].shape == (8,)
