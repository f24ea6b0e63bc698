"""Acceptance tests of the end-to-end slice on examples/lenet."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgec.compiler.driver import compile_model
from edgec.compiler.workflows.verify import verify
from edgec.isa.container import read_program
from edgec.isa.errors import EdgecError
from edgec.runtime_emu.host import run_step

ROOT = Path(__file__).resolve().parents[2]
LENET = str(ROOT / "examples" / "lenet" / "model.py")
MASK = str(ROOT / "examples" / "lenet" / "user.mask")


@pytest.fixture(scope="module")
def masked():
    return compile_model(LENET, MASK)


def test_lenet_verify_bit_exact_and_faithful(masked):
    rep = verify(masked)
    assert rep.bit_exact, rep.mismatches
    assert len(rep.fidelity) == 8
    for name, cos, rel in rep.fidelity:       # acceptance 3: every gradient cos >= 0.95
        assert cos >= 0.95, (name, cos)


def _ranges(prog, sym_name, rows):
    """Byte ranges of whole dim-0 rows `rows` of a parameter symbol."""
    s = prog.symbol(sym_name)
    es = 1 if s["dtype"] == "i8" else 4
    row = es * int(np.prod(s["shape"][1:]))
    return [(s["addr"] + r * row, s["addr"] + (r + 1) * row) for r in rows]


def _cols(prog, sym_name, cols, block):
    """Byte ranges of dim-1 blocks `cols` (of `block` elements) in every row."""
    s = prog.symbol(sym_name)
    es = 1 if s["dtype"] == "i8" else 4
    row = int(np.prod(s["shape"][1:]))
    out = []
    for r in range(s["shape"][0]):
        for c in cols:
            a = s["addr"] + es * (r * row + c * block)
            out.append((a, a + es * block))
    return out


def test_pruned_channels_never_read_and_unchanged(masked):
    prog = masked.program
    x, y = np.asarray(masked.example_input), np.arange(16) % 10
    out, m = run_step(prog, masked.target, x, y, 0)
    image = np.frombuffer(prog.data, np.uint8)
    pruned = {"conv1": [6, 7], "conv2": [4, 5, 7, 12, 13, 14, 15],
              "fc1": [20, 21, 22, 23, 25, 27, 28, 29, 30, 31]}
    assert {k: sorted(set(range(len(v) + len(masked.mask[k]))) - set(masked.mask[k]))
            for k, v in pruned.items()} == pruned
    spans = []
    for layer, rows in pruned.items():
        for kind in ("param", "master"):
            for p in ("weight", "bias"):
                spans += _ranges(prog, f"{kind}:{layer}.{p}", rows)
    for kind in ("param", "master"):       # columns fed by pruned channels
        spans += _cols(prog, f"{kind}:conv2.weight", pruned["conv1"], 9)
        spans += _cols(prog, f"{kind}:fc1.weight", pruned["conv2"], 4)
        spans += _cols(prog, f"{kind}:fc2.weight", pruned["fc1"], 1)
    assert len(spans) > 100
    for a, b in spans:
        assert not m.read_map[a:b].any(), f"pruned bytes {a}..{b} were read"
        assert np.array_equal(m.ddr[a:b], image[a:b]), f"pruned bytes {a}..{b} changed"
    # and the kept ones did change (the step is not a no-op)
    k = _ranges(prog, "master:conv1.weight", [0])[0]
    assert not np.array_equal(m.ddr[k[0]:k[1]], image[k[0]:k[1]])
    # out.npz view: pruned gradients are exactly zero, pruned parameters unchanged
    g = out["grad/conv1.weight"]
    assert not g[[6, 7]].any() and g[:6].any()


def _weight_bytes_read(prog, m):
    total = 0
    for s in prog.symbols:
        if s["kind"] in ("param", "master"):
            es = 1 if s["dtype"] == "i8" else 4
            n = es * int(np.prod(s["shape"]))
            total += int(m.read_map[s["addr"]:s["addr"] + n].sum())
    return total


def test_half_mask_halves_work(tmp_path):
    half = tmp_path / "half.mask"
    half.write_text("conv1: 0-3\nconv2: 0-7\nfc1: 0-15\n")
    res = {}
    for name, mask in (("full", None), ("half", str(half))):
        c = compile_model(LENET, mask)
        x, y = np.asarray(c.example_input), np.arange(16) % 10
        _, m = run_step(c.program, c.target, x, y, 0)
        res[name] = (m.counters["macs"], _weight_bytes_read(c.program, m), m.counters["cycles"])
    mac_ratio = res["half"][0] / res["full"][0]
    byte_ratio = res["half"][1] / res["full"][1]
    print(f"half mask: MACs {res['half'][0]}/{res['full'][0]} = {mac_ratio:.3f}, weight bytes "
          f"{res['half'][1]}/{res['full'][1]} = {byte_ratio:.3f}, cycles "
          f"{res['half'][2]}/{res['full'][2]}")
    assert mac_ratio < 0.45          # conv2 and fc1 shrink on both sides: ~1/4 .. 1/2
    assert byte_ratio < 0.6


def test_compile_is_deterministic_across_processes(tmp_path, masked):
    outs = []
    for i in range(2):
        o = tmp_path / f"p{i}.bin"
        subprocess.run([sys.executable, "-m", "edgec.compiler.workflows.cli", "compile", LENET,
                        "--mask", MASK, "-o", str(o), "-q"], check=True,
                       env={"PYTHONHASHSEED": str(i + 1), "PATH": "/usr/bin:/bin"})
        outs.append(o.read_bytes())
    assert outs[0] == outs[1] == masked.blob


def test_corrupted_program_is_a_clear_error(masked):
    blob = bytearray(masked.blob)
    blob[200] ^= 0x10
    with pytest.raises(EdgecError, match="checksum"):
        read_program(bytes(blob), "bad.bin")
    with pytest.raises(EdgecError, match="too short|truncated|checksum"):
        read_program(bytes(masked.blob[:100]), "short.bin")
    with pytest.raises(EdgecError, match="bad magic"):
        read_program(b"XXXX" + bytes(masked.blob[4:]), "magic.bin")
