"""Issue 7, robustness of the text inputs: user.mask, target TOML and model.py.  Every bad
file is one EdgecError naming the file (and line:col where the format has lines)."""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgec.compiler.workflows import cli
from edgec.compiler.frontend.load import load_model
from edgec.compiler.mask.file import parse_mask
from edgec.isa.errors import EdgecError
from edgec.isa.target import DEFAULT_TARGET, Target, load_target

ROOT = Path(__file__).resolve().parents[2]
LAYERS = {"conv1": 8, "conv2": 16, "fc1": 32, "fc2": 10}      # examples/lenet
LOGITS = "fc2"
VALID_MASK = (ROOT / "examples" / "lenet" / "user.mask").read_text()
SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
LOCATED = re.compile(r"^user\.mask:(\d+):(\d+): \S")


def _mask(text: str):
    """parse_mask's result, or the located EdgecError it raised (anything else fails)."""
    try:
        return parse_mask("user.mask", LAYERS, LOGITS, text=text)
    except EdgecError as e:
        m = LOCATED.match(str(e))
        assert m, f"unlocated mask error: {e}"
        line, col = int(m.group(1)), int(m.group(2))
        lines = text.split("\n")
        assert 1 <= line <= len(lines), (line, len(lines), str(e))
        assert 1 <= col <= len(lines[line - 1]) + 1, (col, lines[line - 1], str(e))
        return e


MASK_ALPHABET = st.sampled_from(list("0123456789-,:# \t\n\r.") + [
    "conv1", "conv2", "fc1", "fc2", "x", "\u00e9", "\0", "\ufeff", "9" * 5000, "-1"])


@SETTINGS
@given(st.lists(MASK_ALPHABET, max_size=40).map("".join))
def test_random_mask_text(text):
    _mask(text)


@SETTINGS
@given(st.text(max_size=80))
def test_arbitrary_unicode_mask_text(text):
    _mask(text)


@SETTINGS
@given(data=st.data())
def test_mutated_valid_mask(data):
    s = list(VALID_MASK)
    for _ in range(data.draw(st.integers(1, 5))):
        k = data.draw(st.integers(0, len(s)))
        op = data.draw(st.sampled_from(["del", "ins", "sub"]))
        ch = data.draw(MASK_ALPHABET)
        if op == "del" and k < len(s):
            del s[k]
        elif op == "ins":
            s.insert(k, ch)
        elif k < len(s):
            s[k] = ch
    _mask("".join(s))


@pytest.mark.parametrize("text, where, words", [
    ("conv1: 0-3\nconv9: 1\n", "2:1", ["unknown layer 'conv9'"]),
    ("conv1: 0-3\nconv1: 1\n", "2:1", ["duplicate layer"]),
    ("conv1: 8\n", "1:8", ["out of range", "0-7"]),
    ("conv1: 0, " + "9" * 5000 + "\n", "1:11", ["out of range", "5000 digits"]),
    ("conv1: 5-2\n", "1:8", ["empty range"]),
    ("conv1:\n", "1:1", ["empty keep list"]),
    ("fc2: 0-3\n", "1:1", ["logits"]),
    ("conv1 0-3\n", "1:7", ["syntax error"]),
    ("conv1: 0-\n", "1:10", ["syntax error"]),
    ("conv1: 1 @ 2\n", "1:10", ["syntax error", "'@'"]),
])
def test_mask_errors_are_located(text, where, words):
    e = _mask(text)
    assert isinstance(e, EdgecError)
    assert str(e).startswith(f"user.mask:{where}: "), str(e)
    for w in words:
        assert w in str(e)


def test_mask_file_errors(tmp_path):
    with pytest.raises(EdgecError, match="no such file"):
        parse_mask(str(tmp_path / "missing.mask"), LAYERS, LOGITS)
    p = tmp_path / "bin.mask"
    p.write_bytes(b"conv1: \xff\xfe\n")
    with pytest.raises(EdgecError, match=r"bin\.mask: cannot read"):
        parse_mask(str(p), LAYERS, LOGITS)
    with pytest.raises(EdgecError, match="cannot read"):
        parse_mask(str(tmp_path), LAYERS, LOGITS)


# ---------------------------------------------------------------- target TOML

DEFAULT_TOML = Path(DEFAULT_TARGET).read_text()
TOML_VALUES = st.sampled_from(["0", "-1", "1", "16", "1.5", "true", '"x"', "[]", "{}",
                               "inf", "nan", "1e9", str(2**20 + 1), str(2**40), str(2**63 - 1),
                               "1979-05-27", "0x10", "'''a'''"]) | st.integers().map(str)


def _target(tmp_path_factory, raw: bytes):
    path = tmp_path_factory.mktemp("t") / "t.toml"
    path.write_bytes(raw)
    try:
        tg = load_target(path)
    except EdgecError as e:
        assert str(e).startswith(f"{path}: "), str(e)
        return e
    assert isinstance(tg, Target)
    for v in (tg.mac_rows, tg.ibuf, tg.wbuf, tg.abuf, tg.ddr_bytes, tg.vector_lanes):
        assert isinstance(v, int) and v > 0
    return tg


@SETTINGS
@given(data=st.data())
def test_mutated_target_values(tmp_path_factory, data):
    lines = DEFAULT_TOML.split("\n")
    idx = [i for i, ln in enumerate(lines) if "=" in ln and not ln.startswith("#")]
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.sampled_from(idx))
        lines[i] = lines[i].split("=")[0] + "= " + data.draw(TOML_VALUES)
    if data.draw(st.booleans()):
        del lines[data.draw(st.integers(0, len(lines) - 1))]
    _target(tmp_path_factory, "\n".join(lines).encode())


@SETTINGS
@given(raw=st.binary(max_size=120) | st.text(max_size=120).map(lambda t: t.encode()))
def test_random_target_bytes(tmp_path_factory, raw):
    _target(tmp_path_factory, raw)


def test_target_errors_name_the_file(tmp_path):
    with pytest.raises(EdgecError, match=r"nope\.toml: cannot read"):
        load_target(tmp_path / "nope.toml")
    p = tmp_path / "bad.toml"
    p.write_bytes(b"\xff\xfe[target]\n")
    with pytest.raises(EdgecError, match=r"bad\.toml: not a UTF-8"):
        load_target(p)
    p.write_text(DEFAULT_TOML.replace("rows = 16", "rows = 0"))
    with pytest.raises(EdgecError, match=r"bad\.toml: \[mac\] rows = 0 is out of range"):
        load_target(p)
    p.write_text(DEFAULT_TOML.replace("[vector]", "[vectr]"))
    with pytest.raises(EdgecError, match=r"bad\.toml: missing \[vector\] lanes"):
        load_target(p)
    p.write_text("[target\n")
    with pytest.raises(EdgecError, match=r"bad\.toml: .*line 1"):
        load_target(p)


# ---------------------------------------------------------------- model.py

MODELS = {
    "syntax": ("import torch\nmodel = (\nexample_input = 1\n", "m.py:2:", ["syntax error"]),
    "no_model": ("import torch\nexample_input = torch.zeros(2, 4)\n", "m.py:",
                 ["does not define `model`"]),
    "no_input": ("import torch\nmodel = torch.nn.Linear(4, 3)\n", "m.py:",
                 ["does not define `example_input`"]),
    "raises": ("import torch\n\ndef f():\n    raise RuntimeError('boom')\nf()\n", "m.py:4:",
               ["RuntimeError: boom"]),
    "exit": ("import sys\nsys.exit(3)\n", "m.py:", ["exit(3)"]),
    "bad_types": ("import torch\nmodel = 3\nexample_input = torch.zeros(2, 4)\n", "m.py:",
                  ["torch.nn.Module"]),
    "int_input": ("import torch\nmodel = torch.nn.Linear(4, 3)\n"
                  "example_input = torch.zeros(2, 4, dtype=torch.int64)\n", "m.py:",
                  ["floating-point"]),
    "bad_str": ("class E(Exception):\n    def __str__(self):\n        raise ValueError\n"
                "raise E()\n", "m.py:4:", ["E"]),
    "nul": ("x = 1\0\n", "m.py:", []),
    "unsupported": ("import torch\nclass M(torch.nn.Module):\n    def __init__(self):\n"
                    "        super().__init__()\n        self.fc = torch.nn.Linear(4, 3)\n"
                    "    def forward(self, x):\n        return torch.sin(self.fc(x))\n"
                    "model = M()\nexample_input = torch.zeros(2, 4)\n", "m.py:7",
                    ["unsupported op 'sin'"]),
}


@pytest.mark.parametrize("case", sorted(MODELS))
def test_bad_model_files(tmp_path, capsys, case):
    src, where, words = MODELS[case]
    path = tmp_path / "m.py"
    path.write_text(src)
    out = tmp_path / "prog.bin"
    out.write_bytes(b"previous prog.bin")
    rc = cli.main(["compile", str(path), "-q", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert err.startswith("edgec: error: ") and "Traceback" not in err, err
    assert where in err, err
    for w in words:
        assert w in err, err
    assert out.read_bytes() == b"previous prog.bin"
    assert [f.name for f in tmp_path.iterdir()] and not [
        f for f in tmp_path.iterdir() if f.name.startswith(".edgec-")]


def test_load_model_missing_and_directory(tmp_path):
    with pytest.raises(EdgecError, match="no such file"):
        load_model(str(tmp_path / "none.py"))
    with pytest.raises(EdgecError, match="not a regular file"):
        load_model(str(tmp_path))


def test_cli_bad_mask_and_target_exit_1(tmp_path, capsys):
    lenet = ROOT / "examples" / "lenet"
    m = tmp_path / "u.mask"
    m.write_text("conv1: 0-3\nconv2: 99\n")
    rc = cli.main(["compile", str(lenet / "model.py"), "--mask", str(m), "-q",
                   "-o", str(tmp_path / "p.bin")])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith(f"edgec: error: {m}:2:8: channel index 99"), err
    t = tmp_path / "t.toml"
    t.write_bytes(b"\x00\xff")
    with contextlib.redirect_stdout(io.StringIO()):
        rc = cli.main(["compile", str(lenet / "model.py"), "--target", str(t), "-q",
                       "-o", str(tmp_path / "p.bin")])
    err = capsys.readouterr().err
    assert rc == 1 and str(t) in err and "Traceback" not in err, err
    assert not (tmp_path / "p.bin").exists()


# ---------------------------------------------------------------- assembly, IR dumps, ONNX

FAST = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])
TOKENS = st.sampled_from(["0", "-1", "255", str(2**31), str(2**63), str(10**30), "{", "}",
                          "[", "]", ",", ":", "=", "%", "@", "\"", ".data", ".symbol", "END",
                          "\0", "\u00e9", "\n", " ", "nest", "tile", "value", "9" * 300])


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    """lenet compiled once: its assembly text and its five IR dumps."""
    from edgec.compiler.driver import compile_model
    from edgec.isa.disasm import disassemble
    lenet = ROOT / "examples" / "lenet"
    d = tmp_path_factory.mktemp("dump")
    c = compile_model(str(lenet / "model.py"), str(lenet / "user.mask"), dump_ir=str(d))
    texts = {f.name: f.read_text() for f in sorted(d.iterdir())}
    texts["prog.s"] = "\n".join(disassemble(c.program)) + "\n"
    return texts


def _mutate(data, text: str) -> str:
    lines = text.split("\n")
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(lines) - 1))
        op = data.draw(st.sampled_from(["del", "dup", "swap", "token", "number", "trunc"]))
        if op == "del" and len(lines) > 1:
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = data.draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "token":
            k = data.draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:k] + data.draw(TOKENS) + lines[i][k:]
        elif op == "number":
            big = data.draw(st.sampled_from(["0", "-1", str(2**32), str(2**63), str(10**30)]))
            lines[i] = re.sub(r"\d+", big, lines[i], count=1)
        else:
            lines[i] = lines[i][:data.draw(st.integers(0, len(lines[i])))]
    return "\n".join(lines)


def _located(fn, text: str, name: str):
    try:
        return fn(text)
    except EdgecError as e:
        assert re.match(re.escape(name) + r":\d+:\d+: \S", str(e)), str(e)
        return e


@pytest.mark.slow
@settings(FAST, max_examples=25)
@given(data=st.data())
def test_mutated_assembly(dumps, data):
    from edgec.compiler.asm import assemble
    _located(lambda t: assemble(t, "prog.s"), _mutate(data, dumps["prog.s"]), "prog.s")


@FAST
@given(data=st.data())
def test_mutated_ir_dump(dumps, data):
    from edgec.compiler.ir.text import check_ir, parse_ir
    name = data.draw(st.sampled_from([n for n in sorted(dumps) if n != "prog.s"]))
    _located(lambda t: check_ir(parse_ir(t, name), name), _mutate(data, dumps[name]), name)


def test_asm_container_errors_are_located(dumps):
    from edgec.compiler.asm import assemble
    text = re.sub(r"(\"addr\":)\d+", r"\g<1>4294967295", dumps["prog.s"], count=1)
    e = _located(lambda t: assemble(t, "prog.s"), text, "prog.s")
    assert isinstance(e, EdgecError) and "outside DDR" in str(e)


def test_ir_undeclared_param_is_located(dumps):
    from edgec.compiler.ir.text import check_ir, parse_ir
    name = "03-quantize.ir"
    text = dumps[name].replace("%param:conv1.bias", "%param:conv9.bias", 1)
    e = _located(lambda t: check_ir(parse_ir(t, name), name), text, name)
    assert isinstance(e, EdgecError) and "not declared" in str(e)


def test_onnx_bad_initializer_is_clean(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto as T
    from onnx import helper as h
    from edgec.compiler.frontend.onnx_in import load_onnx
    w = T(name="w", data_type=T.FLOAT, dims=[3, 4], raw_data=b"\0" * 20)  # 20 bytes, not 48
    g = h.make_graph([h.make_node("Gemm", ["x", "w"], ["y"], transB=1)], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [2, 4])],
                     [h.make_tensor_value_info("y", T.FLOAT, [2, 3])], initializer=[w])
    p = tmp_path / "m.onnx"
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 13)]), str(p))
    with pytest.raises(EdgecError, match=r"m\.onnx:.*\bw\b"):
        load_onnx(str(p))
