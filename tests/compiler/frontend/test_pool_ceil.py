"""ceil_mode pooling where it gives floor mode's windows (timm's ResNet-D downsampling,
SqueezeNet and GoogLeNet at sizes that divide): accepted, its gradients those of PyTorch
and the program bit-exact; where ceil_mode adds a partial window: a located error."""
import pytest
import torch
import torch.nn.functional as F

from edgec.compiler.driver import compile_model
from edgec.compiler.frontend.capture import capture, float_values
from edgec.compiler.frontend.load import load_model
from edgec.compiler.ir.float_interp import run_float
from edgec.compiler.workflows.verify import verify
from edgec.isa.errors import EdgecError

MODEL = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.mp = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.ap = nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)
        self.fc = nn.Linear(8 * 2 * 2, 4)

    def forward(self, x):
        x = self.ap(self.mp(torch.relu(self.c(x))))
        return self.fc(torch.flatten(x, 1))


model = Net()
example_input = torch.randn(2, 3, SIZE, SIZE)
"""


def _write(tmp_path, size):
    p = tmp_path / "model.py"
    p.write_text(MODEL.replace("SIZE", str(size)))
    return str(p)


def test_ceil_mode_that_adds_no_window(tmp_path):
    path = _write(tmp_path, 8)
    model, x = load_model(path)
    g = capture(model, x, path)
    labels = torch.arange(2) % 4
    env = run_float(g, x, labels, float_values(g, model))
    F.cross_entropy(model(x), labels).backward()
    for k, p in model.named_parameters():
        assert torch.allclose(env[g.outputs[f"grad:{k}"]], p.grad, atol=1e-5), k
    assert verify(compile_model(path), sr_seeds=2).bit_exact


def test_ceil_mode_with_a_partial_window_is_named(tmp_path):
    path = _write(tmp_path, 7)
    with pytest.raises(EdgecError) as e:
        compile_model(path)
    assert str(e.value).startswith("model.py:")
    assert "'maxpool' (layer 'mp', MaxPool2d) with ceil_mode=True on a 7x7 input" in str(e.value)
