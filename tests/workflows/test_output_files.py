"""Output files of the CLI follow the umask like any file a plain open() creates, and the
bundled examples need no package beyond the plain install (their digits ship in
examples/digits.npz)."""
from __future__ import annotations

import contextlib
import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgec.compiler.workflows import cli

ROOT = Path(__file__).resolve().parents[2]
LENET = ROOT / "examples/lenet/model.py"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_outputs_follow_the_umask(tmp_path, mask):
    prog, batch, out = tmp_path / "prog.bin", tmp_path / "batch.npz", tmp_path / "out.npz"
    with _umask(mask), contextlib.redirect_stderr(io.StringIO()), \
            contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["compile", str(LENET), "-o", str(prog), "-q"]) == 0
        subprocess.run([sys.executable, str(ROOT / "examples/lenet/batch.py"), str(batch)],
                       check=True, capture_output=True)
        assert cli.main(["run", str(prog), "--input", str(batch), "-o", str(out)]) == 0
    for path in (prog, out):
        assert _mode(path) == 0o666 & ~mask, (path.name, oct(_mode(path)))


def test_failed_command_leaves_the_old_output(tmp_path):
    prog = tmp_path / "prog.bin"
    prog.write_bytes(b"old")
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\nraise ValueError('no')\n")
    with contextlib.redirect_stderr(io.StringIO()):
        assert cli.main(["compile", str(bad), "-o", str(prog), "-q"]) != 0
    assert prog.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".edgec-")] == []


_NO_SKLEARN = """
import sys
sys.modules['sklearn'] = None      # as if not installed: importing it raises ImportError
from edgec.compiler.driver import compile_model
for model in sys.argv[1:]:
    compile_model(model)
print('ok')
"""


@pytest.mark.slow
def test_examples_compile_without_optional_packages():
    models = [str(ROOT / f"examples/{m}/model.py") for m in ("lenet", "personalize", "bnresnet")]
    r = subprocess.run([sys.executable, "-c", _NO_SKLEARN, *models], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_bundled_digits_are_the_uci_digits():
    datasets = pytest.importorskip("sklearn.datasets")
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from digits import digits
    finally:
        sys.path.remove(str(ROOT / "examples"))
    x, y = digits()
    ref = datasets.load_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float32
    np.testing.assert_array_equal(x[:, 0] * 16.0, ref.images)
    np.testing.assert_array_equal(y, ref.target)
