"""A command given the wrong kind of file says what the file looks like and what it
expected (isa/filekind.py), in one line, without executing it, and writes nothing."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgec.compiler.workflows import cli
from edgec.isa import filekind
from edgec.isa.container import Program, write_program
from edgec.isa.encoding import encode
from edgec.isa.target import load_target

ROOT = Path(__file__).resolve().parents[2]
LENET = ROOT / "examples" / "lenet"
TINY = ("import torch\nfrom torch import nn\nmodel = nn.Sequential(nn.Linear(4, 3))\n"
        "example_input = torch.randn(2, 4)\n")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("kinds")
    fp = load_target().fingerprint
    (d / "prog.bin").write_bytes(write_program(Program(fp, encode("END"), b"", 64)))
    np.savez(d / "batch.npz", x=np.zeros((2, 4), np.float32), y=np.zeros(2, np.int64))
    np.save(d / "batch.npy", np.zeros((2, 4), np.float32))
    torch.save({"w": torch.zeros(2)}, d / "w.pt")
    (d / "user.mask").write_text((LENET / "user.mask").read_text())
    (d / "model.py").write_text(TINY)
    (d / "dump.txt").write_text("# edgec graph IR\nedgec graph v1 stage capture\n")
    (d / "raw.dat").write_bytes(bytes(range(256)) * 4)
    return d


@pytest.mark.parametrize("name, kind", [
    ("prog.bin", filekind.PROGRAM), ("batch.npz", filekind.NPZ), ("batch.npy", filekind.NPY),
    ("w.pt", filekind.TORCH), ("user.mask", filekind.MASK), ("model.py", filekind.PYTHON),
    ("dump.txt", filekind.IR), ("raw.dat", "a binary file"),
])
def test_sniff(files, name, kind):
    assert filekind.sniff(str(files / name)) == kind


def test_sniff_targets_assembly_and_plain_text(tmp_path):
    assert filekind.sniff(str(ROOT / "isa" / "targets" / "default.toml")) == filekind.TOML
    (tmp_path / "p.s").write_text(".target 00\n.ddr_size 64\nEND\n")
    assert filekind.sniff(str(tmp_path / "p.s")) == filekind.ASM
    (tmp_path / "notes.txt").write_text("some words\n")
    assert filekind.sniff(str(tmp_path / "notes.txt")) is None


@pytest.mark.parametrize("argv, words", [
    (["verify", "{prog.bin}"], ["prog.bin: this looks like a prog.bin", "not a model.py",
                                "edgec run"]),
    (["compile", "{user.mask}"], ["looks like a user.mask", "not a model.py", "--mask"]),
    (["compile", "{batch.npz}"], ["looks like a NumPy .npz archive", "--input"]),
    (["compile", "{w.pt}"], ["looks like a PyTorch file", "load_state_dict"]),
    (["mask", "{raw.dat}", "--keep", "0.5"], ["looks like a binary file", "not a model.py"]),
    (["run", "{model.py}", "--input", "{batch.npz}"], ["looks like Python source",
                                                       "not a prog.bin"]),
    (["disasm", "{batch.npz}"], ["looks like a NumPy .npz archive", "not a prog.bin"]),
    (["ir", "{prog.bin}"], ["looks like a prog.bin", "not an edgec IR dump"]),
    (["asm", "{prog.bin}"], ["looks like a prog.bin", "not edgec assembly"]),
    (["run", "{prog.bin}", "--input", "{batch.npy}"], [
        "batch.npy: this is a NumPy .npy file (one array of shape [2, 4])",
        "arrays x (float32) and y (int64", "numpy.savez"]),
    (["run", "{prog.bin}", "--input", "{prog.bin}"], ["looks like a prog.bin",
                                                      "not an .npz with arrays x"]),
    (["compile", "{model.py}", "--target", "{prog.bin}"], ["looks like a prog.bin",
                                                           "not a target TOML"]),
    (["compile", "{model.py}", "--mask", "{prog.bin}"], ["looks like a prog.bin",
                                                         "not a user.mask"]),
])
def test_wrong_kind_of_file(files, tmp_path, capsys, argv, words):
    out = tmp_path / "out"
    argv = [str(files / a[1:-1]) if a.startswith("{") else a for a in argv]
    if argv[0] in ("compile", "run", "asm", "mask"):
        argv += ["-o", str(out)]
    assert cli.main(argv + (["-q"] if argv[0] in ("compile", "verify") else [])) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgec: error: ") and "\n" not in err, err
    for w in words:
        assert w in err, err
    assert not out.exists()
