"""Squeeze-excitation gating x * s[N, C, 1, 1] (MobileNetV3, EfficientNet, RegNet blocks):
forward and backward on VMULC + RQ, with masks through it; the global average pool kept
4-D feeds the gate's 1x1 convs."""
import pytest
import torch

from edgec.compiler.driver import compile_model
from edgec.isa.errors import EdgecError

from test_e2e_blocks import captured_graph_matches_autograd, verified, write

SE = """
import torch
from torch import nn


class SE(nn.Module):
    def __init__(self, c, r):
        super().__init__()
        self.fc1 = nn.Conv2d(c, r, 1)
        self.fc2 = nn.Conv2d(r, c, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        s = nn.functional.hardtanh(self.fc2(torch.relu(self.fc1(s))), 0.0, 1.0)
        return x * s


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.se = SE(8, 4)
        self.c = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 6 * 6, 5)

    def forward(self, x):
        y = self.se(torch.relu(self.a(x)))
        return self.fc(torch.relu(self.c(y)).flatten(1))


torch.manual_seed(0)
model = Net().eval()
with torch.no_grad():
    model.se.fc2.bias.fill_(0.5)
example_input = torch.randn(3, 3, 6, 6)
"""

MASK = {"a": [0, 2, 3, 5, 6], "se.fc2": [0, 2, 3, 5, 6], "se.fc1": [1, 3]}


def test_capture_of_gate_matches_autograd(tmp_path):
    g = captured_graph_matches_autograd(write(tmp_path, SE), torch.arange(3) % 5)
    ops = [n.op for n in g.nodes]
    assert ops.count("chmul") == 2 and ops.count("chmul_ds") == 1    # y, dx; ds
    assert any(n.op == "chmul" and n.attrs["grad"] for n in g.nodes)


@pytest.mark.parametrize("mask", [None, MASK])
def test_gate_bit_exact_and_faithful(tmp_path, mask):
    c, rep = verified(tmp_path, SE, mask, 4, 2)
    assert rep.counters.get("VMULC", 0) >= 3           # forward, dx, ds
    # the criterion, on every gradient the device did not clip (a gradient at +-127 of
    # its format is clipped by design, numerics.md section 4: masked, se.fc1.weight is
    # on this batch, and its criterion is 0.976)
    g = c.graph
    for name, cos in rep.devfwd.items():
        q = rep.out[f"grad/{name}"] / 2.0 ** g.values[g.outputs[f"grad:{name}"]].exp
        if abs(q).max() < 127:
            assert cos >= 0.98, (name, cos)
    cos = {n: v for n, v, _ in rep.fidelity}
    assert min(cos.values()) > 0.9, cos


def test_gate_and_tensor_must_keep_the_same_channels(tmp_path):
    path = write(tmp_path, SE)
    mask = tmp_path / "user.mask"
    mask.write_text("# the tensor is masked, its gate is not\na: 0 2 3 5 6\n")
    with pytest.raises(EdgecError) as e:
        compile_model(path, str(mask))
    msg = str(e.value)
    assert "user.mask:2:1" in msg and "layer 'se'" in msg and "model.py:15" in msg, msg
    assert "'a' keeps 0, 2-3, 5-6" in msg and "the gate (keeps all channels)" in msg, msg


DENSE_SE = """
import torch
from torch import nn

class DenseLayer(nn.Module):
    def __init__(self, c, g):
        super().__init__()
        self.bn = nn.BatchNorm2d(c)
        self.conv = nn.Conv2d(c, g, 3, padding=1, bias=False)
    def forward(self, x):
        return torch.cat([x, self.conv(torch.relu(self.bn(x)))], 1)

class SE(nn.Module):
    def __init__(self, c, r):
        super().__init__()
        self.fc1 = nn.Conv2d(c, r, 1); self.fc2 = nn.Conv2d(r, c, 1)
    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * nn.functional.hardtanh(self.fc2(torch.relu(self.fc1(s))), 0.0, 1.0)

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.block = nn.Sequential(DenseLayer(16, 8), DenseLayer(24, 8), DenseLayer(32, 8))
        self.se = SE(40, 10)
        self.head = nn.Linear(40, 10)
    def forward(self, x):
        x = self.se(self.block(self.stem(x)))
        return self.head(x.mean((2, 3)))

torch.manual_seed(0)
model = Net().eval()
with torch.no_grad():
    model.se.fc2.bias.fill_(0.5)
example_input = torch.randn(4, 3, 8, 8)
"""


def test_dense_block_with_squeeze_excitation_masked(tmp_path):
    """A DenseNet block (each layer concatenates its input and its new features) feeding a
    squeeze-excitation gate, masks on the stem and two growth convs: the gate's producer
    is masked with the concat's shifted list (stem 0-11 at 0, block.0.conv 0-5 at 16,
    all of block.1.conv at 24, block.2.conv 1-6 at 32)."""
    mask = {"stem": list(range(12)), "block.0.conv": list(range(6)),
            "block.2.conv": list(range(1, 7))}
    gate = list(range(12)) + [16 + k for k in range(6)] + list(range(24, 32)) + \
        [32 + k for k in range(1, 7)]
    with pytest.raises(EdgecError, match=r"concat 'block.2.cat.out' keeps 0-11, 16-21, "
                                         r"24-31, 33-38\) and the gate \(keeps all"):
        verified(tmp_path, DENSE_SE, mask, 1, 1)
    c, rep = verified(tmp_path, DENSE_SE, {**mask, "se.fc2": gate}, 1, 1)
    assert c.graph.meta["tables"]["cat:block.2.cat.out"] == gate
    assert rep.fidelity_worst[1] >= 0.98, rep.devfwd
