"""Command-line conventions: one-line usage errors naming the subcommand with a
did-you-mean, --version, -q where documented, no options that do nothing, and advice on
a wrong target that names the target."""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import pytest

from edgec.compiler.driver import compile_model
from edgec.compiler.workflows import cli

ROOT = Path(__file__).resolve().parents[2]
LENET = ROOT / "examples" / "lenet"
MODEL, MASK = str(LENET / "model.py"), str(LENET / "user.mask")
TINY = ROOT / "tests" / "data" / "tiny.toml"


def _usage_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("edgec: error: "), err
    return err.strip()


def test_option_typo_names_the_subcommand_and_suggests(capsys):
    err = _usage_error(capsys, ["compile", MODEL, "--maks", MASK])
    assert err.startswith(f"edgec: error: compile: unrecognized arguments: --maks {MASK} "
                          "(did you mean --mask?); usage: edgec compile MODEL [options]"), err
    err = _usage_error(capsys, ["verify", MODEL, "--sr-sedes=3"])
    assert "verify: unrecognized arguments: --sr-sedes=3 (did you mean --sr-seeds?)" in err
    err = _usage_error(capsys, ["compil", MODEL])
    assert "invalid choice: 'compil'" in err and "(did you mean compile?)" in err, err
    err = _usage_error(capsys, ["compile", MODEL, "--search", "greedyy"])
    assert "(did you mean greedy?)" in err, err
    err = _usage_error(capsys, ["run", "prog.bin"])
    assert err.startswith("edgec: error: run: the following arguments are required: "
                          "--input; usage: edgec run PROGRAM [options]"), err


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"edgec {importlib.metadata.version('edgec')}\n"


def test_mask_quiet(tmp_path, capsys):
    out = tmp_path / "u.mask"
    assert cli.main(["mask", MODEL, "--keep", "0.5", "-q", "-o", str(out)]) == 0
    assert capsys.readouterr().err == "" and out.read_text().count(":") >= 3


# options of the training step that do not change the exported forward (measured: the
# same fwd.onnx bytes with and without each, examples/lenet and examples/bnresnet)
TRAINING_ONLY = ("--lr", "--seed", "--momentum", "--weight-decay", "--train", "--freeze",
                 "--bias-only", "--search")


@pytest.mark.parametrize("opt", TRAINING_ONLY)
def test_export_onnx_refuses_training_options(capsys, tmp_path, opt):
    value = {"--bias-only": [], "--search": ["exhaustive"], "--train": ["fc*"],
             "--freeze": ["fc*"]}.get(opt, ["1"])
    out = tmp_path / "fwd.onnx"
    err = _usage_error(capsys, ["export-onnx", MODEL, opt, *value, "-o", str(out)])
    assert f"export-onnx: unrecognized arguments: {opt}" in err, err
    assert "shapes the training step" in err and not out.exists(), err
    args = cli.build_parser("compile").parse_args(["compile", MODEL, opt, *value])
    assert args.cmd == "compile"                    # compile takes it


def test_wrong_target_names_the_target(tmp_path, capsys):
    c = compile_model(MODEL, MASK, target=str(TINY))
    assert c.program.meta["target"] == "tiny-test"
    assert "target" not in compile_model(MODEL, MASK).program.meta   # bundled: by fingerprint
    prog = tmp_path / "prog.bin"
    prog.write_bytes(c.blob)
    np.savez(tmp_path / "b.npz", x=np.zeros((16, 1, 8, 8), np.float32),
             y=np.zeros(16, np.int64))
    for cmd in (["run", str(prog), "--input", str(tmp_path / "b.npz"), "-o",
                 str(tmp_path / "o.npz")], ["report", str(prog)]):
        assert cli.main(cmd) == 1
        err = capsys.readouterr().err.strip()
        assert err == (f"edgec: error: {prog}: program compiled for target 'tiny-test' "
                       f"(fingerprint {c.program.target_fp.hex()}), but the target here is "
                       "'edge-dpu-16x16' (fingerprint 6d440fce03ad0310, the default: no "
                       "--target): pass "
                       "--target with the TOML file of target 'tiny-test', or recompile it "
                       "for 'edge-dpu-16x16'"), err
    assert not (tmp_path / "o.npz").exists()
    assert cli.main(["report", str(prog), "--target", str(TINY)]) == 0
