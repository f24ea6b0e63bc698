"""The recipes of docs/usage.md work as written: a user's own data to train.npz /
batch.npz that `edgec finetune` and `edgec run` take, and the ONNX export command whose
file edgec compiles (torch 2.13's default exporter needs onnxscript, which is not
installed)."""
from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import numpy as np
import torch

from edgec.compiler.frontend.load import load_model
from edgec.compiler.workflows import cli

ROOT = Path(__file__).resolve().parents[2]
USAGE = (ROOT / "docs/usage.md").read_text()
LENET = ROOT / "examples/lenet/model.py"


def _quiet(argv) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return cli.main(argv)


def test_own_data_recipe(tmp_path, monkeypatch):
    block = re.search(r"From a user's own data:\n\n\s*```python\n(.*?)```", USAGE, re.S)
    assert block, "the recipe is missing from docs/usage.md"
    code = "\n".join(line[2:] if line.startswith("  ") else line
                     for line in block.group(1).splitlines())
    rng = np.random.default_rng(0)
    images = rng.random((40, 1, 8, 8))            # a user's 8x8 grey images in [0, 1]
    labels = rng.integers(0, 10, 40)
    monkeypatch.chdir(tmp_path)
    exec(code, {"images": images, "labels": labels, "N": 16})
    assert _quiet(["compile", str(LENET), "-o", "prog.bin", "-q"]) == 0
    assert _quiet(["run", "prog.bin", "--input", "batch.npz", "-o", "out.npz"]) == 0
    assert _quiet(["finetune", str(LENET), "--data", "train.npz", "--steps", "2",
                   "-o", "tuned.pt", "-q"]) == 0
    assert os.path.exists("out.npz") and os.path.exists("tuned.pt")


def test_onnx_export_recipe(tmp_path, monkeypatch):
    cmd = re.search(r"`(torch\.onnx\.export\(.*?\))`", USAGE, re.S).group(1)
    model, example_input = load_model(str(LENET))
    monkeypatch.chdir(tmp_path)
    exec(" ".join(cmd.split()), {"torch": torch, "model": model,
                                 "example_input": example_input})
    assert _quiet(["compile", "model.onnx", "-o", "onnx.bin", "-q"]) == 0
