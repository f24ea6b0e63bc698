"""Errors and warnings about what a user feeds edgec: data outside the input's format, a
--classes list, a mask that breaks a residual add.  Each names what is wrong and where."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgec.compiler.driver import compile_model
from edgec.compiler.workflows import cli
from edgec.isa.errors import EdgecError
from edgec.runtime_emu.host import initial_xtab, symbol_exp

ROOT = Path(__file__).resolve().parents[2]
LENET = ROOT / "examples" / "lenet"


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    d = tmp_path_factory.mktemp("lenet")
    c = compile_model(str(LENET / "model.py"), str(LENET / "user.mask"))
    (d / "prog.bin").write_bytes(c.blob)
    return c, d


def _batch(path, x, n=16):
    np.savez(path, x=x.astype(np.float32), y=np.arange(n, dtype=np.int64) % 10)


def test_input_outside_its_format_warns(lenet, tmp_path, capsys):
    from edgec.runtime_emu.host import input_saturation
    c, d = lenet
    e = symbol_exp(c.program.symbol("in:x"), initial_xtab(c.program), "E")
    step = 2.0 ** e
    x = np.random.default_rng(0).uniform(0, 1, (16, 1, 8, 8))
    x[0, 0, 0, :2] = 128 * step                   # within one step of +-127: rounding
    assert input_saturation(c.program, x) is None
    _batch(tmp_path / "ok.npz", x)
    assert cli.main(["run", str(d / "prog.bin"), "--input", str(tmp_path / "ok.npz"),
                     "-o", str(tmp_path / "out.npz")]) == 0
    assert "warning" not in capsys.readouterr().err
    x255 = np.round(x * 255)
    _batch(tmp_path / "pixels.npz", x255)
    assert cli.main(["run", str(d / "prog.bin"), "--input", str(tmp_path / "pixels.npz"),
                     "-o", str(tmp_path / "out.npz")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    n = int(np.count_nonzero(x255 > 128 * step))
    assert err == [f"edgec: warning: {tmp_path / 'pixels.npz'}: input x has values in "
                   f"[{x255.min():.6g}, {x255.max():.6g}], but its format (int8 x 2^{e}, set "
                   f"by example_input) holds [{-127 * step:.6g}, {127 * step:.6g}]: {n} of "
                   f"{x.size} elements saturate; scale the data as example_input is scaled "
                   "(e.g. pixels / 255)"], err


def test_classes_out_of_range_are_named(capsys):
    with pytest.raises(EdgecError, match=r"^--classes 0,3,12,11: class ids 11, 12 out of "
                       r"range: the model's logits have K = 10 classes, ids 0-9$"):
        compile_model(str(LENET / "model.py"), classes=[0, 3, 12, 11])
    with pytest.raises(EdgecError, match=r"^--classes 3,3: need at least two distinct"):
        compile_model(str(LENET / "model.py"), classes=[3, 3])


RESIDUAL = textwrap.dedent("""\
    import torch
    from torch import nn
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(4, 4, 3, padding=1)
            self.b = nn.Conv2d(4, 4, 3, padding=1)
            self.fc = nn.Linear(64, 3)
        def forward(self, x):
            y = torch.relu(self.a(x))
            z = torch.relu(self.b(y) + SKIP)
            return self.fc(torch.flatten(z, 1))
    model = M()
    example_input = torch.randn(2, 4, 4, 4)
    """)


@pytest.mark.parametrize("skip, mask, words", [
    ("y", "b: 0-1\n", ["user.mask:1:1: residual add at model.py:11", "'b' keeps 0-1 and 'a' "
                       "keeps all its channels (no line in the mask)", "same kept list"]),
    ("y", "a: 0-2\nb: 0-1\n", ["user.mask:2:1:", "'b' keeps 0-1 and 'a' keeps 0-2"]),
    ("x", "b: 0-1\n", ["'b' keeps 0-1 and the model's input keeps all its channels",
                       "drop the line"]),
])
def test_residual_mask_error_names_both_layers(tmp_path, capsys, skip, mask, words):
    (tmp_path / "model.py").write_text(RESIDUAL.replace("SKIP", skip))
    (tmp_path / "user.mask").write_text(mask)
    out = tmp_path / "prog.bin"
    assert cli.main(["compile", str(tmp_path / "model.py"), "--mask",
                     str(tmp_path / "user.mask"), "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err.strip()
    for w in words:
        assert w in err, err
    assert not out.exists()
