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
