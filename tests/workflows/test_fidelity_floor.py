"""The int8-forward floor (compiler/workflows/fidelity.py) against an independent computation:
PyTorch autograd through lenet's forward with each activation rounded to its compiled
int8 format by a straight-through fake-quant (forward: the rounded value; backward:
identity; a ReLU's derivative read from its rounded output, as the device reads it), and
verify's report of it."""
import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgec.compiler.driver import compile_model
from edgec.compiler.workflows.fidelity import float_and_floor, forward_formats
from edgec.compiler.workflows.floatmodel import cosine_rel, quantize_input
from edgec.compiler.workflows.verify import make_batch, verify

LENET = str(Path(__file__).resolve().parents[2] / "examples" / "lenet" / "model.py")


@pytest.fixture(scope="module")
def lenet():
    return compile_model(LENET)


def _fake_quant(t: torch.Tensor, e: int) -> torch.Tensor:
    s = 2.0 ** e
    return t + (torch.clamp(torch.round(t / s), -127, 127) * s - t).detach()


def _relu_q(t: torch.Tensor, e: int) -> torch.Tensor:
    """relu then fake-quant; the derivative is 1 where the ROUNDED output is > 0."""
    q = _fake_quant(torch.relu(t), e).detach()
    h = torch.where(q > 0, t, torch.zeros_like(t))
    return h + (q - h).detach()


def test_floor_equals_autograd_through_rounded_forward(lenet):
    c = lenet
    x, y = make_batch(c, 0)
    plain, floor = float_and_floor(c, x, y)
    fmt = forward_formats(c)
    m = copy.deepcopy(c.model).float()
    e_x = c.graph.values["x"].exp
    h = quantize_input(x, e_x).float() * 2.0 ** e_x
    h = _relu_q(m.conv1(h), fmt["relu.out"])
    h = _fake_quant(m.pool1(h), fmt["pool1.out"])
    h = _relu_q(m.conv2(h), fmt["relu_1.out"])
    h = _fake_quant(m.pool2(h), fmt["pool2.out"])
    h = _relu_q(m.fc1(torch.flatten(h, 1)), fmt["relu_2.out"])
    z = _fake_quant(m.fc2(h), fmt["fc2.out"])
    F.cross_entropy(z, y).backward()
    rounded = floor["relu.out"].numpy() != plain["relu.out"].numpy()
    assert rounded.mean() > 0.3                  # the floor really rounds the activations
    for name, p in m.named_parameters():
        ours = floor[f"grad:{name}"].double().numpy().reshape(-1)
        ref = p.grad.double().numpy().reshape(-1)
        assert cosine_rel(ours, ref)[0] > 0.9999, name
        assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max(), name
        # and the floor is not the float gradient: rounding moved it
        assert not np.allclose(ours, plain[f"grad:{name}"].double().numpy().reshape(-1))


def test_verify_reports_the_floor(lenet):
    rep = verify(lenet)
    assert set(rep.floor) == {name for name, _, _ in rep.fidelity}
    assert all(0.9 < f <= 1.0 for f in rep.floor.values()), rep.floor
