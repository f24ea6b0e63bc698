"""verify's fidelity criterion (compiler/workflows/fidelity.py, docs/numerics.md section 7): the
fixed-point gradients, averaged over stochastic-rounding seeds, against float
back-propagation through the device's own int8 forward.

* device_forward_backprop equals PyTorch autograd of a module holding the device's
  dequantized weights, with every activation snapped to the device's value by forward
  hooks (conv, BatchNorm, ReLU, maxpool, residual add, linear; with and without a mask);
* the backward-only re-runs the seed average uses equal full reference runs;
* examples/lenet with its mask meets the criterion; planted backward bugs fail it, and
  `edgec verify` exits 3 when it fails."""
import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgec.compiler.workflows import cli, fidelity
from edgec.compiler.driver import compile_model
from edgec.compiler.workflows.fidelity import (backward_graph, criterion_cosines, dequantized,
                                     device_forward_backprop, device_grad,
                                     seed_averaged_grads)
from edgec.compiler.reference import run_reference
from edgec.compiler.workflows.floatmodel import cosine_rel
from edgec.compiler.workflows.verify import format_report, make_batch, reference_step, verify

ROOT = Path(__file__).resolve().parents[2]
LENET = str(ROOT / "examples" / "lenet" / "model.py")
LENET_MASK = str(ROOT / "examples" / "lenet" / "user.mask")

NET = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        h = self.pool(torch.relu(self.bn1(self.conv1(x))))
        h = torch.relu(self.conv2(h) + h)
        return self.fc(torch.flatten(h, 1))


torch.manual_seed(0)
model = Net()
with torch.no_grad():
    model.bn1.running_mean.uniform_(-0.3, 0.3)
    model.bn1.running_var.uniform_(0.5, 2.0)
    model.bn1.weight.uniform_(0.5, 1.5)
    model.bn1.bias.uniform_(-0.2, 0.2)
model.eval()
example_input = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(1))
'''
KEPT = [0, 1, 2, 4, 5, 7]       # conv1 and conv2 meet at the residual add: one list


class Snapped(nn.Module):
    """NET as the device computes it, in float64: the BatchNorm as its two depthwise
    stages (normalisation with the frozen int8 scale after conv1's frozen -mean bias, then
    gamma/beta; docs/numerics.md section 4), every weight the device's dequantized compute
    copy, and every activation the device holds replaced by its dequantized value
    (forward hooks, straight-through); a ReLU's derivative read from the device's int8
    output; pruned channels multiplied by 0 (zero value, zero gradient)."""

    def __init__(self, graph, env, kept):
        super().__init__()
        self.graph, self.env = graph, env
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.Conv2d(8, 8, 1, groups=8, bias=False)
        self.affine = nn.Conv2d(8, 8, 1, groups=8)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 5)
        self.double()
        self.m = torch.zeros(8, dtype=torch.float64)
        self.m[kept] = 1
        self.kept = kept
        with torch.no_grad():
            for mod, w, b in ((self.conv1, "conv1.weight", "bn1:mean"),
                              (self.norm, "bn1:scale", None),
                              (self.affine, "bn1.weight", "bn1.bias"),
                              (self.conv2, "conv2.weight", "conv2.bias"),
                              (self.fc, "fc.weight", "fc.bias")):
                mod.weight.copy_(self.deq(f"param:{w}").reshape(mod.weight.shape))
                if b is not None:
                    mod.bias.copy_(self.deq(f"param:{b}"))
        for mod, v in ((self.conv1, "conv1.out"), (self.norm, "bn1.xhat"),
                       (self.pool, "pool.out"), (self.conv2, "conv2.out"), (self.fc, "fc.out")):
            mod.register_forward_hook(lambda _m, _i, out, v=v: self.snap(out, v))
        self.conv1.bias.requires_grad_(False)       # frozen constants
        self.norm.weight.requires_grad_(False)

    def deq(self, v):
        return self.env[v].double() * 2.0 ** self.graph.values[v].exp

    def dev(self, v):
        """The device's value of v in the module's (uncompacted) channels."""
        d = self.deq(v)
        if d.dim() == 4 and d.shape[1] != 8:
            full = torch.zeros(d.shape[0], 8, *d.shape[2:], dtype=torch.float64)
            full[:, self.kept] = d
            return full
        return d

    def masked(self, t):
        return t * self.m.view(1, -1, 1, 1) if t.dim() == 4 else t

    def snap(self, out, v):
        out = self.masked(out)
        return out + (self.dev(v) - out).detach()

    def relu(self, t, v):
        d = self.dev(v)
        h = self.masked(torch.where(d > 0, t, torch.zeros_like(t)))
        return h + (d - h).detach()

    def forward(self, x):
        h = self.relu(self.affine(self.norm(self.conv1(x))), "relu.out")
        h = self.pool(h)
        h = self.relu(self.conv2(h) + h, "relu_1.out")
        return self.fc(torch.flatten(h, 1))


@pytest.fixture(scope="module")
def net_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("net")
    (d / "model.py").write_text(NET)
    (d / "user.mask").write_text("conv1: 0-2, 4 5 7\nconv2: 0-2, 4 5 7\n")
    return d


@pytest.mark.parametrize("masked", [False, True])
def test_device_forward_backprop_equals_autograd_of_snapped_module(net_path, masked):
    c = compile_model(str(net_path / "model.py"),
                      str(net_path / "user.mask") if masked else None)
    x, y = make_batch(c, 0)
    env = reference_step(c, x, y, 0)
    ours = device_forward_backprop(c.float_graph, c.graph, env)
    kept = KEPT if masked else list(range(8))
    m = Snapped(c.graph, env, kept)
    F.cross_entropy(m(dequantized(c.graph, env, "x")), y).backward()
    theirs = {"conv1.weight": m.conv1.weight, "bn1.weight": m.affine.weight,
              "bn1.bias": m.affine.bias, "conv2.weight": m.conv2.weight,
              "conv2.bias": m.conv2.bias, "fc.weight": m.fc.weight, "fc.bias": m.fc.bias}
    assert set(ours) == set(theirs)
    drop = [i for i in range(8) if i not in kept]
    for name, p in theirs.items():
        a, b = ours[name].reshape(-1).numpy(), p.grad.reshape(-1).numpy()
        assert np.abs(b).max() > 0, name
        assert np.allclose(a, b, rtol=1e-9, atol=1e-12 * np.abs(b).max()), name
        if drop and not name.startswith("fc."):   # pruned channels: exactly zero
            assert not ours[name].reshape(8, -1)[drop].any(), name
    # the device's values matter: float autograd with the same dequantized weights but
    # un-snapped activations gives other gradients
    plain = copy.deepcopy(m)
    plain.snap = lambda out, v: plain.masked(out)
    plain.relu = lambda t, v: plain.masked(torch.relu(t))
    plain.zero_grad()
    F.cross_entropy(plain(dequantized(c.graph, env, "x")), y).backward()
    assert not np.allclose(ours["conv1.weight"].numpy(),
                           plain.conv1.weight.grad.numpy(), rtol=1e-3)


@pytest.fixture(scope="module")
def lenet():
    c = compile_model(LENET, LENET_MASK)
    x, y = make_batch(c, 0)
    return c, x, y, reference_step(c, x, y, 0)


def test_backward_only_runs_equal_full_runs(lenet):
    c, x, y, env0 = lenet
    sub, takes = backward_graph(c.graph)
    assert not any(n.op in ("conv", "linear", "sgd") for n in sub.nodes)
    part = run_reference(sub, {v: env0[v] for v in takes}, 5)
    full = reference_step(c, x, y, 5)
    made = [o for n in sub.nodes for o in n.outputs]
    assert made and all(torch.equal(part[v], full[v]) for v in made)
    assert not torch.equal(full["grad:conv1.weight"], env0["grad:conv1.weight"])  # SR moved


def test_lenet_meets_the_criterion(lenet):
    c, x, y, env0 = lenet
    cos = criterion_cosines(c, env0, 0, 8)
    names = {p["name"] for p in c.program.meta["params"] if p["grad"]}
    assert set(cos) == names
    assert min(cos.values()) >= fidelity.THRESHOLD, cos
    # the seed average is what gets there: one seed alone is further away
    want = device_forward_backprop(c.float_graph, c.graph, env0)
    one = {p: cosine_rel(device_grad(c.graph, env0, p).numpy(), want[p].numpy())[0]
           for p in names}
    assert sum(one.values()) < sum(cos.values())
    rep = verify(c, sr_seeds=8)
    assert rep.bit_exact and rep.fidelity_ok and rep.devfwd == pytest.approx(cos)
    assert "fidelity: PASS (worst: " in format_report(rep)


def _planted(c, edit):
    """A copy of compiled c whose quantized graph's backward has a planted bug."""
    bad = copy.copy(c)
    bad.graph = copy.deepcopy(c.graph)
    edit(bad.graph)
    return bad


def _relu_ignored(g):           # the backward forgets fc1's ReLU derivative
    n = next(n for n in g.nodes if n.op == "relu_bwd" and n.inputs[1] == "relu_2.out")
    n.attrs["pass_range"] = (-128, 128)


@pytest.mark.parametrize("bug", ["sign", "relu", "wrong_seeds"])
def test_the_criterion_can_fail(lenet, bug):
    c, x, y, env0 = lenet
    want = device_forward_backprop(c.float_graph, c.graph, env0)
    seeds = list(range(8))
    if bug == "sign":                      # one gradient's sign flipped
        got = seed_averaged_grads(c.graph, env0, seeds)
        got["fc1.bias"] = -got["fc1.bias"]
    elif bug == "relu":                    # a backward that ignores a ReLU mask
        bad = _planted(c, _relu_ignored)
        got = seed_averaged_grads(bad.graph, reference_step(bad, x, y, 0), seeds)
    else:                                  # averaged over another batch's runs
        x2, y2 = make_batch(c, 1)
        got = seed_averaged_grads(c.graph, reference_step(c, x2, y2, 0), seeds)
    cos = {p: cosine_rel(g.numpy(), want[p].numpy())[0] for p, g in got.items()}
    assert min(cos.values()) < fidelity.THRESHOLD, cos


@pytest.mark.slow
def test_verify_exit_status(monkeypatch, capsys):
    argv = ["verify", LENET, "--mask", LENET_MASK, "--sr-seeds", "2", "-q"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "dev-fwd cos" in out and "over 2 seeds" in out and "fidelity: PASS" in out
    monkeypatch.setattr(fidelity, "THRESHOLD", 1.5)    # no cosine reaches it
    assert cli.main(argv) == 3
    assert "fidelity: FAIL (worst: " in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["verify", LENET, "--sr-seeds", "0"])
