"""edgec disasm -> edgec asm round trip, hand edits, and located assembler errors."""
from __future__ import annotations

import os
from pathlib import Path
import re

import pytest

from edgec.compiler.workflows import cli
from edgec.compiler.asm import assemble
from edgec.isa.container import read_program
from edgec.isa.disasm import disassemble
from edgec.isa.encoding import decode, encode
from edgec.isa.errors import EdgecError
from edgec.isa.table import BY_NAME, WORD_BYTES

ROOT = str(Path(__file__).resolve().parents[2])
LENET = os.path.join(ROOT, "examples", "lenet")
TINY = os.path.join(ROOT, "tests", "data", "tiny.toml")


def _compile(mask, target=None):
    from edgec.compiler.driver import compile_model
    mask = os.path.join(LENET, "user.mask") if mask else None
    return compile_model(os.path.join(LENET, "model.py"), mask, target).blob


@pytest.fixture(scope="module")
def blobs():
    return {"masked": _compile(True), "unmasked": _compile(False),
            "tiny": _compile(True, TINY)}


def _text(blob: bytes) -> str:
    return "\n".join(disassemble(read_program(blob))) + "\n"


@pytest.mark.parametrize("which", ["masked", "unmasked", "tiny"])
def test_round_trip_byte_exact(blobs, which):
    blob = blobs[which]
    text = _text(blob)
    assert assemble(text, "x.s") == blob
    # the text is a fixed point too
    assert _text(assemble(text, "x.s")) == text


def test_listing_shape(blobs):
    lines = _text(blobs["masked"]).splitlines()
    p = read_program(blobs["masked"])
    assert lines[2] == f".target {p.target_fp.hex()}"
    assert lines[3] == f".ddr_size {p.ddr_size}"
    instr = [ln for ln in lines if ln.split(":")[0].strip().isdigit()]
    assert len(instr) == p.n_instr
    # every field of every instruction is named (dep only when non-zero)
    for ln in instr:
        body = ln.split(";")[0].split(":", 1)[1].split()
        ins = BY_NAME[body[0]]
        names = [kv.split("=")[0] for kv in body[1:]]
        want = [f.name for f in ins.all_fields[1:] if f.name != "dep" or "dep" in names]
        assert names == want
    # symbol comments on DDR addresses, origin comments, data and symbol sections
    assert any("ddr: in:x" in ln for ln in instr)
    assert any("model.py:" in ln for ln in instr)
    assert any(ln.startswith(".data 0x") for ln in lines)
    assert sum(ln.startswith(".symbol {") for ln in lines) == len(p.symbols)
    assert sum(ln.startswith(".meta {") for ln in lines) == 1
    # instructions come before the data and the symbols
    first_data = next(i for i, ln in enumerate(lines) if ln.startswith(".data"))
    assert max(lines.index(ln) for ln in instr) < first_data


def test_hand_edit_changes_field(blobs):
    text = _text(blobs["masked"])
    lines = text.splitlines()
    i = next(k for k, ln in enumerate(lines) if " RQ " in ln and "mode=nearest" in ln)
    idx = int(lines[i].split(":")[0])
    lines[i] = re.sub(r" dep=\w+", "", lines[i])      # codegen's tokens, respelled below
    lines[i] = lines[i].replace("mode=nearest", "mode=stochastic").replace(
        " shift=", " dep=5 shift=", 1)
    blob = assemble("\n".join(lines) + "\n", "edit.s")
    p = read_program(blob)
    ins, vals = decode(p.code[idx * WORD_BYTES:(idx + 1) * WORD_BYTES])
    assert ins.name == "RQ" and vals["mode"] == 1 and vals["dep"] == 5
    out = _text(blob).splitlines()
    assert "mode=stochastic" in out[i] and "dep=pop_prev_push_prev" in out[i]
    # only that word changed in the code section
    orig = read_program(blobs["masked"])
    diff = [k for k in range(p.n_instr)
            if p.code[k * WORD_BYTES:(k + 1) * WORD_BYTES]
            != orig.code[k * WORD_BYTES:(k + 1) * WORD_BYTES]]
    assert diff == [idx]


def test_small_hand_written_program():
    src = """
    .target 0011223344556677   ; fingerprint
    .ddr_size 4096
    LD buf=WBUF baddr=3 ddr=0x40 esize=1 n0=1 n1=1 n2=1 n3=4 s0=0 s1=0 s2=0 s3=1
    RQ saddr=0 dbuf=IBUF shift=-2 mode=stochastic RQ_REST
    END
    .data_size 0x44
    .data 0x40 01020304
    .symbol {"name":"w","kind":"param","addr":64,"shape":[4],"dtype":"i8","exp":-7}
    """.replace("RQ_REST", " ".join(f"{f.name}=0" for f in BY_NAME["RQ"].fields if f.name
                                    not in ("saddr", "dbuf", "shift", "mode")))
    p = read_program(assemble(src, "hand.s"))
    assert p.target_fp == bytes.fromhex("0011223344556677") and p.ddr_size == 4096
    assert p.code[:WORD_BYTES] == encode("LD", buf=1, baddr=3, ddr=64, esize=1, n0=1, n1=1,
                                          n2=1, n3=4, s3=1)
    assert decode(p.code[WORD_BYTES:2 * WORD_BYTES])[1]["shift"] == -2
    assert p.data == bytes(64) + b"\x01\x02\x03\x04"
    assert p.symbols[0]["name"] == "w" and p.meta == {}


HEAD = ".target 0011223344556677\n.ddr_size 4096\n.data_size 0\n"


@pytest.mark.parametrize("body, line, col, words", [
    ("SEDE ddr=0\n", 4, 1, ["unknown instruction 'SEDE'", "did you mean 'SEED'"]),
    ("ld buf=IBUF\n", 4, 1, ["unknown instruction 'ld'", "'LD'"]),
    ("SEED dr=0\n", 4, 6, ["no field 'dr'", "did you mean 'ddr'"]),
    ("SEED opcode=1\n", 4, 6, ["no field 'opcode'"]),
    ("SEED ddr=0x100000000\n", 4, 10, ["out of range", "32 bits"]),
    ("RQ shift=128\n", 4, 10, ["out of range", "-128..127"]),
    ("LD buf=4\n", 4, 8, ["out of range", "2 bits"]),
    ("LD buf=YBUF\n", 4, 8, ["bad value 'YBUF'", "IBUF"]),
    ("MAC pattern=FW\n", 4, 13, ["bad value 'FW'", "'FP'"]),
    ("RQ mode=round\n", 4, 9, ["bad value 'round'", "nearest", "stochastic"]),
    ("SEED ddr=IBUF\n", 4, 10, ["takes an integer"]),
    ("SEED ddr=1 ddr=2\n", 4, 12, ["given twice"]),
    ("SEED ddr=1 7\n", 4, 12, ["syntax error", "expected"]),
    ("SEED ddr=@\n", 4, 10, ["syntax error", "unexpected character '@'"]),
    ("SEED ddr\n", 4, 9, ["syntax error", "'='"]),
    (".data 0x0 0102\n", 4, 7, ["runs past .data_size"]),
    (".data 0 012\n", 4, 9, ["odd number of hex digits"]),
    (".ddr_size 5\n", 4, 1, ["given twice"]),
    (".symbol {\"name\": }\n", 4, 18, ["bad JSON"]),
    (".word 00\n", 4, 7, ["128 hex digits"]),
    ("RQ shift=70\n", 4, 10, ["RQ field shift=70 outside [-31, 31]", "traps"]),
    ("SGD cbits=0\n", 4, 11, ["SGD field cbits=0 outside [1, 32]"]),
    ("SEED\n", 4, 1, ["SEED: missing field ddr"]),
    ("LD buf=IBUF baddr=0 ddr=0 esize=1 n0=1 n1=1 n2=1 n3=4 s3=1\n", 4, 1,
     ["LD: missing fields s0, s1, s2", "every field but dep"]),
])
def test_located_errors(body, line, col, words):
    with pytest.raises(EdgecError) as ei:
        assemble(HEAD + body, "bad.s")
    msg = str(ei.value)
    assert msg.startswith(f"bad.s:{line}:{col}: "), msg
    for w in words:
        assert w in msg, msg


def test_missing_directive_and_bad_symbols():
    with pytest.raises(EdgecError, match=r"^bad.s:\d+:\d+: missing .target"):
        assemble(".ddr_size 16\n.data_size 0\nEND\n", "bad.s")
    with pytest.raises(EdgecError, match="lies outside DDR"):
        assemble(HEAD + '.symbol {"name":"x","kind":"act","addr":4095,"shape":[2],'
                 '"dtype":"i8","exp":0}\n', "bad.s")


def test_cli_disasm_asm_round_trip_and_errors(blobs, tmp_path, capsys):
    prog = tmp_path / "prog.bin"
    prog.write_bytes(blobs["tiny"])
    assert cli.main(["disasm", str(prog)]) == 0
    src = tmp_path / "prog.s"
    src.write_text(capsys.readouterr().out)
    out = tmp_path / "again.bin"
    assert cli.main(["asm", str(src), "-o", str(out)]) == 0
    assert out.read_bytes() == blobs["tiny"]
    capsys.readouterr()

    # a broken source: error on stderr, exit 1, existing output untouched, no temp files
    bad = tmp_path / "bad.s"
    bad.write_text(src.read_text().replace("LD ", "LDX ", 1))
    before = sorted(os.listdir(tmp_path))
    assert cli.main(["asm", str(bad), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"edgec: error: {bad}:") and "unknown instruction 'LDX'" in err
    assert "Traceback" not in err
    assert out.read_bytes() == blobs["tiny"]
    assert sorted(os.listdir(tmp_path)) == before
    assert cli.main(["asm", str(tmp_path / "missing.s"), "-o", str(out)]) == 1
    assert "no such file" in capsys.readouterr().err


def test_undecodable_word_round_trips_as_raw_word():
    from edgec.isa.container import Program, write_program
    bad = bytearray(encode("END"))
    bad[-1] = 0x80                                   # stray bit: decode() rejects it
    blob = write_program(Program(bytes(8), bytes(bad) + encode("END"), b"", 64))
    text = _text(blob)
    assert ".word " + bytes(bad).hex() in text and "undecodable" in text
    assert assemble(text, "raw.s") == blob


def test_closed_pipe_is_not_a_traceback(tmp_path):
    """`edgec disasm prog.bin | head -1`: the reader goes away; no traceback."""
    import subprocess
    import sys
    from edgec.compiler.driver import compile_model
    prog = tmp_path / "p.bin"
    prog.write_bytes(compile_model("examples/lenet/model.py").blob)
    p = subprocess.Popen([sys.executable, "-m", "edgec.compiler.workflows.cli", "disasm", str(prog)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.readline()
    p.stdout.close()                  # like head -1
    err = p.stderr.read().decode()
    p.wait()
    assert "Traceback" not in err and "BrokenPipe" not in err, err
