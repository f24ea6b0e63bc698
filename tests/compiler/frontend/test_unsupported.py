"""Unsupported ops are reported as the user wrote them: the op, its layer and its model.py
line, also where the op that fails is an aten op of a torch.nn layer, of a user's module,
or of the backward pass (which has neither layer nor line of its own); and the capture of
the backward that used to be missing (`mean` without keepdim)."""
import pytest
import torch
import torch.nn.functional as F

from edgec.compiler.frontend.aten import table
from edgec.compiler.frontend.capture import capture, float_values
from edgec.compiler.frontend.load import load_model
from edgec.compiler.ir.float_interp import run_float
from edgec.isa.errors import EdgecError

SE = """
import torch
from torch import nn


class SqueezeExcite(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gate = nn.Conv2d(c, 1, 1)

    def forward(self, x):
        s = torch.relu(self.gate(x))        # a spatial gate (N, 1, H, W): not supported
        return x * s


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.se = SqueezeExcite(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.se(torch.relu(self.conv(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


model = Net()
example_input = torch.randn(2, 3, 6, 6)
"""

MEAN = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(2, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = torch.relu(self.c(x))
        return self.fc(y.mean((2, 3)))


model = Net()
example_input = torch.randn(2, 2, 5, 5)
"""


def _error(tmp_path, text):
    p = tmp_path / "model.py"
    p.write_text(text)
    model, x = load_model(str(p))
    with pytest.raises(EdgecError) as e:
        capture(model, x, str(p))
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def _line(text, needle):
    return next(i for i, ln in enumerate(text.splitlines(), 1) if needle in ln)


def test_gating_multiply_in_a_users_module_is_mul(tmp_path):
    """`x * s` inside a user's module (a spatial gate; the per-channel one is supported):
    the op is 'mul', not the module's class."""
    msg = _error(tmp_path, SE)
    assert msg.startswith(f"model.py:{_line(SE, 'return x * s')}: unsupported op 'mul' "
                          "(layer 'se', SqueezeExcite)"), msg


def test_backward_op_is_reported_as_its_forward_op(tmp_path, monkeypatch):
    """A backward aten op without a handler (here: the mean's unsqueeze, removed) is
    reported as the forward op whose error it consumes: 'mean', its layer and line."""
    handlers = dict(table.HANDLERS)
    handlers.pop("unsqueeze", None)
    monkeypatch.setattr("edgec.compiler.frontend.capture.HANDLERS", handlers)
    msg = _error(tmp_path, MEAN)
    assert msg.startswith(f"model.py:{_line(MEAN, 'y.mean((2, 3))')}: unsupported op "
                          "'mean' (layer 'forward'; its backward needs aten 'unsqueeze')"), msg


def test_backward_op_in_a_module_names_the_module(tmp_path, monkeypatch):
    """The same through a layer's own forward: the nn.Linear's error (addmm backward)."""
    handlers = dict(table.HANDLERS)
    del handlers["mm"]
    monkeypatch.setattr("edgec.compiler.frontend.capture.HANDLERS", handlers)
    msg = _error(tmp_path, MEAN)
    assert msg.startswith(f"model.py:{_line(MEAN, 'self.fc(y.mean')}: unsupported op "
                          "'addmm' (layer 'fc'; its backward needs aten 'mm')"), msg


def test_mean_without_keepdim_captures(tmp_path):
    p = tmp_path / "model.py"
    p.write_text(MEAN)
    model, x = load_model(str(p))
    g = capture(model, x, str(p))
    ops = [n.op for n in g.nodes]
    assert "reshape" in ops and "conv_eb" in ops, ops
    labels = torch.arange(2) % 3
    env = run_float(g, x, labels, float_values(g, model))
    F.cross_entropy(model(x), labels).backward()
    for k, p in model.named_parameters():
        assert torch.allclose(env[g.outputs[f"grad:{k}"]], p.grad, atol=1e-5), k
