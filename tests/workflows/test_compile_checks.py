"""A program that compiles is one the other commands accept: what `edgec run` needs of a
program (isa/interface.py) and what the IR verifier checks are checked when it is
compiled, from a model or from an IR dump, with errors naming the model line, layer, node
or instruction, and nothing written."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from edgec.compiler.workflows import cli
from edgec.isa.container import Program
from edgec.isa.interface import InterfaceError, check_interface

ROOT = Path(__file__).resolve().parents[2]
LENET = ROOT / "examples" / "lenet"

CONV_LOGITS = textwrap.dedent("""\
    import torch
    from torch import nn
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
            self.head = nn.Conv2d(8, 10, 8)
        def forward(self, x):
            x = torch.relu(self.conv1(x))
            return torch.flatten(self.head(x), 1)
    model = M()
    example_input = torch.randn(4, 1, 8, 8)
    """)


def _fail(capsys, argv) -> str:
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgec: error: ") and "\n" not in err, err
    return err


def test_logits_viewed_from_a_conv_are_a_compile_error(tmp_path, capsys):
    (tmp_path / "model.py").write_text(CONV_LOGITS)
    out = tmp_path / "prog.bin"
    err = _fail(capsys, ["compile", str(tmp_path / "model.py"), "-o", str(out), "-q"])
    assert "model.py:10: layer 'head'" in err, err
    assert "[4, 10, 1, 1]" in err and "Linear" in err, err
    assert not out.exists()


def _program(**change) -> Program:
    symbols = [{"name": "in:x", "shape": [2, 3], "dtype": "i8"},
               {"name": "in:labels", "shape": [2], "dtype": "i32"},
               {"name": "rng_seed", "shape": [1], "dtype": "i32"},
               {"name": "z", "shape": [2, 5], "dtype": "i8"},
               {"name": "master:w", "shape": [5, 3], "dtype": "i32"}]
    meta = {"logits": "z", "params": [{"name": "w", "shape": [5, 3], "master": "master:w",
                                        "grad": None}]}
    for k, v in change.items():
        name, field = k.split("__")
        next(s for s in symbols if s["name"].replace(":", "_") == name)[field] = v
    return Program(b"\0" * 32, b"", b"", 0, symbols, meta)


@pytest.mark.parametrize("change, symbol, words", [
    ({"z__shape": [2, 5, 1, 1]}, "z", "expected [N, K]"),
    ({"in_labels__shape": [3]}, "in:labels", "expected i32 [2]"),
    ({"rng_seed__dtype": "i8"}, "rng_seed", "expected one i32"),
    ({"master_w__shape": [5]}, "master:w", "needs 15"),
])
def test_interface_check_names_the_symbol(change, symbol, words):
    check_interface(_program())
    with pytest.raises(InterfaceError) as e:
        check_interface(_program(**change))
    assert e.value.symbol == symbol and words in str(e.value), str(e.value)


@pytest.fixture(scope="module")
def dump(tmp_path_factory):
    """examples/lenet's IR dumps, with its mask."""
    from edgec.compiler.driver import compile_model
    d = tmp_path_factory.mktemp("dump")
    compile_model(str(LENET / "model.py"), str(LENET / "user.mask"), dump_ir=str(d))
    return d


def _edit(src: Path, dst: Path, old: str, new: str) -> int:
    """dst = src with the first `old` replaced; the 1-based line it was on."""
    text = src.read_text()
    k = text.index(old)
    dst.write_text(text[:k] + new + text[k + len(old):])
    return text[:k].count("\n") + 1


CONV1 = "%relu.out: i8<2^-5>[16,6,8,8] = conv"


@pytest.mark.parametrize("stage", ["04-update.ir", "05-tile.loop"])
def test_declared_shape_that_the_op_does_not_compute(dump, tmp_path, capsys, stage):
    bad = tmp_path / stage
    line = _edit(dump / stage, bad, CONV1, CONV1.replace("8,8]", "8,9]"))
    err = _fail(capsys, ["ir", str(bad)])
    assert err.startswith(f"edgec: error: {bad}:{line}:1: node 2 (conv in conv1)"), err
    assert "declared [16, 6, 8, 9]" in err and "computes [16, 6, 8, 8]" in err, err
    out = tmp_path / "prog.bin"
    assert _fail(capsys, ["compile", str(bad), "-o", str(out), "-q"]) == err
    assert not out.exists()


@pytest.mark.parametrize("stage", ["03-quantize.ir", "05-tile.loop"])
def test_shift_outside_what_the_machine_accepts(dump, tmp_path, capsys, stage):
    bad = tmp_path / stage
    line = _edit(dump / stage, bad, "shift=7,", "shift=70,")
    out = tmp_path / "prog.bin"
    err = _fail(capsys, ["compile", str(bad), "-o", str(out), "-q"])
    assert err.startswith(f"edgec: error: {bad}:{line}:1: node 2 (conv conv1 model.py:26): "
                          "instruction 6 (RQ): field shift=70 outside [-31, 31]"), err
    assert not out.exists()


def test_codegen_checks_field_ranges_and_bits():
    from edgec.compiler.backend.codegen import Emitter
    from edgec.isa.errors import EdgecError
    from edgec.isa.target import load_target

    class G:
        nodes = []
    em = Emitter(G(), None, load_target())
    em._append("SEED", 0, {"ddr": 0})
    em.starts.append((1, 5))
    em.where = "sgd fc1 model.py:29"
    em._append("SGD", 0, {"cbits": 8, "lrshift": 32})
    with pytest.raises(EdgecError, match=r"^node 5 \(sgd fc1 model.py:29\): instruction 1 "
                       r"\(SGD\): field lrshift=32 outside \[0, 31\]$"):
        em.finish()
    em.fields[1] = {"cbits": 8, "count": 1 << 40}
    with pytest.raises(EdgecError, match=r"^node 5 .*: instruction 1: SGD: field "
                       r"count=1099511627776 does not fit in 32 bits"):
        em.finish()
