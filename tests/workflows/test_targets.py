"""The bundled targets (isa/targets): the default (256 MiB of DDR) and the same machine
with 2 GiB; a program too large for its target's DDR is a one-line error naming what it
needs, what the target has and the --target that holds it."""
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from edgec.compiler.driver import compile_model
from edgec.compiler.workflows.cli import main
from edgec.isa.container import read_program
from edgec.isa.errors import EdgecError
from edgec.isa.target import bundled_targets, ddr_error, load_target, target_of_program
from edgec.runtime_emu.host import run_step
from edgec.runtime_emu.machine import Machine

ROOT = Path(__file__).resolve().parents[2]
LENET = str(ROOT / "examples" / "lenet" / "model.py")
DEFAULT = (ROOT / "isa" / "targets" / "default.toml").read_text()


def _toml(tmp_path, ddr, name="small"):
    text = DEFAULT.replace('name = "edge-dpu-16x16"', f'name = "{name}"')
    text = text.replace("bytes = 268435456", f"bytes = {ddr}")
    assert f"bytes = {ddr} " in text
    p = tmp_path / f"{name}.toml"
    p.write_text(text)
    return str(p)


def test_bundled_2g_is_the_default_with_more_ddr():
    assert set(bundled_targets()) == {"default", "edge-dpu-16x16-2g"}
    d, big = load_target(None), load_target("edge-dpu-16x16-2g")
    assert big.ddr_bytes == 2 * 2**30 and d.ddr_bytes == 256 * 2**20
    assert dataclasses.replace(big, name=d.name, ddr_bytes=d.ddr_bytes) == d
    assert big.fingerprint != d.fingerprint
    assert load_target("default") == d


def test_program_too_large_names_sizes_and_fix(tmp_path, capsys):
    """lenet needs about 76 KiB: on a 64 KiB copy of the default the compile fails with
    the bytes it needs, the target's DDR and the bundled target that holds it; nothing is
    written."""
    small = _toml(tmp_path, 65536)
    need = compile_model(LENET).program.ddr_size
    assert 65536 < need <= 256 * 2**20
    with pytest.raises(EdgecError) as e:
        compile_model(LENET, target=small)
    msg = str(e.value)
    assert msg.startswith(f"the program needs {need:,} bytes ")
    assert "target 'small' has 65,536 (64 KiB)" in msg
    assert msg.endswith("compile with --target default (the same machine with 256 MiB "
                        "of DDR)"), msg
    out = tmp_path / "p.bin"
    assert main(["compile", LENET, "--target", small, "-q", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("edgec: error: the program needs") and err.count("\n") == 1
    assert not out.exists()


def test_resnet50_sized_program_is_pointed_at_the_2g_target():
    msg = str(ddr_error(load_target(None), 359 * 10**6))
    assert msg == ("the program needs 359,000,000 bytes (342.4 MiB) of DDR, but target "
                   "'edge-dpu-16x16' has 268,435,456 (256 MiB); compile with --target "
                   "edge-dpu-16x16-2g (the same machine with 2 GiB of DDR)")
    tiny = load_target(ROOT / "tests" / "data" / "tiny.toml")     # no bundled twin
    msg = str(ddr_error(tiny, 2 * tiny.ddr_bytes))
    assert "target 'tiny-test' has 16,777,216 (16 MiB)" in msg
    assert "--target FILE.toml whose [ddr] bytes holds it" in msg


def test_emulator_refuses_a_program_larger_than_its_ddr(tmp_path):
    prog = compile_model(LENET).program
    small = load_target(_toml(tmp_path, 65536))
    prog = dataclasses.replace(prog, target_fp=small.fingerprint)
    with pytest.raises(EdgecError, match=r"^the program needs [\d,]+ bytes .* target "
                                         r"'small' has 65,536 \(64 KiB\); compile with "
                                         r"--target default"):
        Machine(prog, small)


def test_2g_program_runs_like_the_default(tmp_path):
    """The same instructions and data (the DDR limit changes no layout), another
    fingerprint; `edgec run` finds the bundled target from the fingerprint."""
    a = compile_model(LENET)
    b = compile_model(LENET, target="edge-dpu-16x16-2g")
    assert a.program.code == b.program.code and a.program.data == b.program.data
    assert a.blob != b.blob
    assert target_of_program(read_program(b.blob, "b.bin").target_fp).name == \
        "edge-dpu-16x16-2g"
    assert target_of_program(a.program.target_fp).name == "edge-dpu-16x16"
    x = np.asarray(a.example_input)
    y = np.arange(len(x)) % 10
    out_a, _ = run_step(a.program, a.target, x, y)
    p = tmp_path / "b.bin"
    p.write_bytes(b.blob)
    np.savez(tmp_path / "batch.npz", x=x.astype(np.float32), y=y.astype(np.int64))
    assert main(["run", str(p), "--input", str(tmp_path / "batch.npz"), "-o",
                 str(tmp_path / "out.npz")]) == 0
    with np.load(tmp_path / "out.npz") as z:
        for k in out_a:
            assert np.array_equal(out_a[k], z[k]), k
