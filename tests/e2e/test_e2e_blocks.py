"""Real-backbone ops (issue 4): BatchNorm, residual adds, depthwise/grouped convs, pooling,
ReLU6/Hardtanh, Dropout/Identity, masks through them, and partial fine-tuning.

Bit-exactness is emulator vs reference interpreter; gradients are checked against
PyTorch's float autograd on the same (masked) model."""
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from edgec.compiler.driver import compile_model, compile_module, frozen_params
from edgec.compiler.frontend.capture import capture, const_values
from edgec.compiler.frontend.load import load_model
from edgec.compiler.ir.float_interp import run_float
from edgec.compiler.workflows.verify import verify
from edgec.isa.errors import EdgecError
from edgec.isa.target import load_target

from randblocks import random_block_case

TINY = load_target(Path(__file__).parents[1] / "data" / "tiny.toml")

BLOCK = """
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return torch.relu(out)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.block = Block(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, stride=2, groups=8)
        self.pw = nn.Conv2d(8, 12, 1)
        self.act = nn.ReLU6()
        self.grp = nn.Conv2d(12, 12, 3, padding=1, groups=3)
        self.pool = nn.AvgPool2d(2)
        self.drop = nn.Dropout(0.3)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = self.block(x)
        x = self.act(self.pw(self.dw(x)))
        x = nn.functional.hardtanh(self.grp(x), -1.0, 1.0)
        x = self.gap(self.drop(self.pool(x)))
        return self.fc(torch.flatten(x, 1))


torch.manual_seed(0)
model = Net()
for m in model.modules():
    if isinstance(m, nn.BatchNorm2d):
        m.running_mean.uniform_(-0.3, 0.3)
        m.running_var.uniform_(0.5, 2.0)
        m.weight.data.uniform_(0.7, 1.3)
        m.bias.data.uniform_(-0.2, 0.2)
model.eval()
example_input = torch.randn(3, 3, 8, 8)
"""


def write(tmp_path, text, name="model.py"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


def captured_graph_matches_autograd(path: str, labels: torch.Tensor):
    """The captured float graph of model.py ``path``, after checking that it computes
    PyTorch's own gradients (float32 autograd) on ``example_input`` and ``labels``."""
    model, x = load_model(path)
    g = capture(model, x, path)
    params = {k: p.detach() for k, p in model.named_parameters()}
    params.update(const_values(g, model))
    env = run_float(g, x, labels, params)
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), labels).backward()
    for k, p in model.named_parameters():
        got = env[g.outputs[f"grad:{k}"]].reshape(p.shape)
        assert torch.allclose(got, p.grad, atol=1e-5, rtol=1e-4), k
    return g


def verified(tmp_path, src: str, mask, seed: int, batch_seed: int):
    """(compiled program, verify report) of model source ``src`` with ``mask`` on the tiny
    target, after checking that it is bit-exact."""
    path = write(tmp_path, src)
    model, ex = load_model(path)
    c = compile_module(model, ex, path, mask, TINY, lr=0.05)
    rep = verify(c, seed=seed, batch_seed=batch_seed)
    assert rep.bit_exact, [(m.symbol, m.index, m.origin) for m in rep.mismatches]
    return c, rep


def test_capture_of_blocks_matches_autograd(tmp_path):
    """The captured float graph (BN as two depthwise 1x1 convs, pools as constant-weight
    depthwise convs, residual adds, error sums) computes PyTorch's own gradients."""
    g = captured_graph_matches_autograd(write(tmp_path, BLOCK), torch.arange(3) % 5)
    ops = {n.op for n in g.nodes}
    assert {"add", "hardtanh", "hardtanh_bwd", "conv_eb", "conv_wg"} <= ops
    assert any(n.op == "add" and n.attrs["grad"] for n in g.nodes)   # error fan-in
    assert {p.kind for p in g.params.values()} >= {"bn_scale", "bn_mean", "avg"}


@pytest.mark.parametrize("mask", [None, {"stem": [0, 2, 3, 5, 6], "block.conv2": [0, 2, 3, 5, 6],
                                          "block.conv1": [1, 4, 7]}])
def test_blocks_bit_exact_and_faithful(tmp_path, mask):
    """The residual stream (stem, block.conv2) keeps one channel list; block.conv1 is free."""
    path = write(tmp_path, BLOCK)
    model, ex = load_model(path)
    c = compile_module(model, ex, path, mask, load_target(None), lr=0.05)
    rep = verify(c, seed=3, batch_seed=1)
    assert rep.bit_exact, [(m.symbol, m.index, m.origin) for m in rep.mismatches]
    cos = {n: v for n, v, _ in rep.fidelity}
    assert len(cos) == len(list(c.model.parameters()))
    assert min(v for n, v in cos.items() if n.endswith("weight")) > 0.9, cos
    assert min(cos.values()) > 0.5, cos     # a 3-channel BN bias is noisier


def test_mask_through_bn_depthwise_pool_skips_work(tmp_path):
    """A mask on the conv feeding BN, a depthwise conv and pooling: the BN affine, the
    depthwise weights and everything after follow it; pruned channels' parameters are never
    read and never change, and the MAC count drops."""
    src = """
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pw = nn.Conv2d(3, 8, 1, bias=False)
            self.bn = nn.BatchNorm2d(8)
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.pool = nn.AvgPool2d(2)
            self.fc = nn.Linear(8 * 3 * 3, 4)

        def forward(self, x):
            x = nn.functional.relu6(self.bn(self.pw(x)))
            x = self.pool(torch.relu(self.dw(x)))
            return self.fc(x.flatten(1))

    torch.manual_seed(1)
    model = Net().eval()
    model.bn.running_var.uniform_(0.5, 2.0)
    example_input = torch.randn(2, 3, 6, 6)
    """
    path = write(tmp_path, src)
    kept = [1, 2, 5, 6]
    model, ex = load_model(path)
    full = compile_module(model, ex, path, {}, TINY, lr=0.05)
    c = compile_module(model, ex, path, {"pw": kept}, TINY, lr=0.05)
    rep = verify(c, seed=1, batch_seed=2)
    assert rep.bit_exact, [(m.symbol, m.index, m.origin) for m in rep.mismatches]
    rep_full = verify(full, seed=1, batch_seed=2)
    assert rep.counters["macs"] < 0.6 * rep_full.counters["macs"]
    m = rep.machine
    syms = {s["name"]: s for s in c.program.symbols}
    pruned = [i for i in range(8) if i not in kept]
    for pname, per in (("bn.weight", 1), ("bn.bias", 1), ("dw.weight", 9), ("dw.bias", 1)):
        for prefix in ("param:", "master:"):
            s = syms[prefix + pname]
            es = 1 if s["dtype"] == "i8" else 4
            for ch in pruned:
                lo = s["addr"] + es * ch * per
                assert not m.read_map[lo:lo + es * per].any(), (prefix + pname, ch)
    for pname in ("bn.weight", "bn.bias", "dw.weight", "dw.bias"):
        after = rep.out[f"param/{pname}"]
        before = dict(model.named_parameters())[pname].detach().numpy()
        for ch in pruned:
            q = 2.0 ** syms[f"master:{pname}"]["exp"]
            assert np.allclose(after[ch], np.round(before[ch] / q) * q), (pname, ch)
        assert np.all(rep.out[f"grad/{pname}"][pruned] == 0)


def _mask_file(tmp_path, text):
    p = tmp_path / "user.mask"
    p.write_text(text)
    return str(p)


def test_residual_masks_must_agree(tmp_path):
    path = write(tmp_path, BLOCK)
    mask = _mask_file(tmp_path, "# stream\nstem: 0-3\nblock.conv2: 0-4\n")
    with pytest.raises(EdgecError) as e:
        compile_model(path, mask)
    msg = str(e.value)
    assert "user.mask:3:1" in msg and "residual add" in msg and "block" in msg, msg
    assert "keeps 0-4 and" in msg and "keeps 0-3" in msg
    assert "masked identically" in msg


def test_depthwise_conv_cannot_be_masked(tmp_path):
    path = write(tmp_path, BLOCK)
    mask = _mask_file(tmp_path, "\n\ndw: 0-3\n")
    with pytest.raises(EdgecError, match=r"user\.mask:3:1: layer 'dw' cannot be masked: it "
                                         r"is a grouped convolution \(groups=8\)"):
        compile_model(path, mask)


def test_partial_finetuning_prunes_backward(tmp_path):
    path = write(tmp_path, BLOCK)
    model, ex = load_model(path)
    frozen = frozen_params(model, train=("grp.*", "fc.*"))
    assert frozen == {k for k, _ in model.named_parameters()} - {"grp.weight", "grp.bias",
                                                                  "fc.weight", "fc.bias"}
    full = compile_module(model, ex, path, {}, TINY, lr=0.05)
    part = compile_module(model, ex, path, {}, TINY, lr=0.05, frozen=frozen)
    rf, rp = verify(full, seed=2), verify(part, seed=2)
    assert rp.bit_exact
    assert {n for n, _, _ in rp.fidelity} == {"grp.weight", "grp.bias", "fc.weight", "fc.bias"}
    assert all(cos > 0.95 for _, cos, _ in rp.fidelity), rp.fidelity
    # no error back-propagation below grp: only conv_eb/hardtanh_bwd of grp's consumers
    ops = [(n.op, n.layer) for n in part.graph.nodes]
    assert not any(layer in ("stem", "bn", "block.conv1", "dw", "pw") and op.endswith(("_eb", "_wg"))
                   for op, layer in ops), ops
    assert rp.counters["macs"] < 0.6 * rf.counters["macs"]
    pr = part.graph.meta["pruned"]
    assert pr["saved"]["macs"] == rf.counters["macs"] - rp.counters["macs"]
    assert pr["saved"]["instructions"] == rf.counters["instructions"] - rp.counters["instructions"]
    # frozen parameters: no master, no update, not in out.npz
    assert "param/stem.weight" not in rp.out and "grad/bn.weight" not in rp.out
    names = {s["name"] for s in part.program.symbols}
    assert "master:stem.weight" not in names and "param:stem.weight" in names


def test_bias_only_trains_biases_and_bn_weights(tmp_path):
    path = write(tmp_path, BLOCK)
    model, _ = load_model(path)
    names = {k for k, _ in model.named_parameters()}
    left = names - frozen_params(model, bias_only=True)
    assert left == {k for k in names if k.endswith(".bias")} | {
        "bn.weight", "block.bn1.weight", "block.bn2.weight"}
    with pytest.raises(EdgecError, match="matches no parameter"):
        frozen_params(model, train=("layer9.*",))
    with pytest.raises(EdgecError, match="no parameter is left trainable"):
        frozen_params(model, freeze=("*",))


@pytest.mark.parametrize("src,op", [
    ("x = torch.nn.functional.gelu(self.c(x))", "gelu"),
    ("x = torch.nn.functional.avg_pool2d(self.c(x), 3, 2, ceil_mode=True)", "avgpool"),
    ("x = self.c(x) * 2.0", "mul"),
    ("x = torch.cat([self.c(x), self.c2(x)], 2)", "cat"),
    ("x = torch.cat([self.c(x)[:, 1:3], self.c2(x)[:, :2]], 1)", "slice"),
    ("x = torch.split(self.c(x), 2, dim=3)[0]", "split"),
])
def test_unsupported_op_names_op_and_line(tmp_path, src, op):
    text = f"""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(2, 4, 3)
            self.c2 = nn.Conv2d(2, 4, 3)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            {src}
            return self.fc(x.mean((2, 3)))

    model = Net()
    example_input = torch.randn(2, 2, 6, 6)
    """
    path = write(tmp_path, text)
    with pytest.raises(EdgecError) as e:
        compile_model(path)
    line = [ln.strip() for ln in textwrap.dedent(text).splitlines()].index(src) + 1
    assert f"model.py:{line}: unsupported op '{op}' (layer 'forward'" in str(e.value), \
        str(e.value)


@pytest.mark.parametrize("seed", range(24))
def test_random_blocks_bit_exact(seed):
    model, example, mask = random_block_case(seed)
    c = compile_module(model, example, "rand.py", mask, TINY, lr=0.05, seed=seed)
    rep = verify(c, seed=seed, batch_seed=seed)
    assert rep.bit_exact, [(m.symbol, m.index, m.ref, m.emu, m.origin) for m in rep.mismatches]
    size = {p["name"]: int(np.prod(p["shape"])) for p in c.program.meta["params"]}
    for name, cos, _ in rep.fidelity:      # (gradients of a few elements are too noisy)
        if size[name] >= 16:
            assert cos > 0.5, (name, cos)


def test_mean_without_keepdim_bit_exact(tmp_path):
    """`x.mean((2, 3))` straight into the head (no keepdim, no flatten): its backward
    unsqueezes the error back to (N, C, 1, 1)."""
    path = write(tmp_path, """
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 8, 3, padding=1)
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(torch.relu(self.c(x)).mean((2, 3)))

    torch.manual_seed(0)
    model = Net()
    example_input = torch.randn(4, 3, 6, 6)
    """)
    c = compile_model(path)
    rep = verify(c)
    assert rep.bit_exact and "grad:c.weight" in rep.checked, rep.mismatches
    assert all(cos > 0.98 for _, cos, _ in rep.fidelity), rep.fidelity
