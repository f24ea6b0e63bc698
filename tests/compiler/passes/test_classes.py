"""--classes: fine-tuning for a subset of the classes (issue 6 subtask).  The classifier
computes only the subset's logits, labels stay original class ids, and the other classes'
classifier rows are never read or changed."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from edgec.compiler.driver import compile_model
from edgec.compiler.workflows.finetune import finetune
from edgec.compiler.workflows.verify import verify
from edgec.isa.errors import EdgecError
from edgec.runtime_emu.host import run_step

ROOT = str(Path(__file__).resolve().parents[3])
LENET = os.path.join(ROOT, "examples", "lenet", "model.py")
MASK = os.path.join(ROOT, "examples", "lenet", "user.mask")
IDS = [0, 3, 7]


@pytest.fixture(scope="module")
def comp():
    return compile_model(LENET, MASK, classes=[7, 0, 3])


def test_subset_program_verifies_and_touches_only_its_rows(comp):
    assert comp.program.meta["class_ids"] == IDS and comp.program.meta["classes"] == 3
    rep = verify(comp, seed=1, batch_seed=2)
    assert rep.bit_exact, [(m.symbol, m.index, m.origin) for m in rep.mismatches]
    assert rep.out["logits"].shape == (16, 3)
    cos = {n: c for n, c, _ in rep.fidelity}
    assert min(cos.values()) > 0.95, cos
    # fc2 rows of the other classes: zero gradient, value unchanged, never read
    g = rep.out["grad/fc2.weight"]
    others = [k for k in range(10) if k not in IDS]
    assert np.all(g[others] == 0) and np.abs(g[IDS]).sum() > 0
    before = dict(comp.model.named_parameters())["fc2.weight"].detach().numpy()
    after = rep.out["param/fc2.weight"]
    s = {x["name"]: x for x in comp.program.symbols}["master:fc2.weight"]
    q = 2.0 ** s["exp"]
    assert np.allclose(after[others], np.round(before[others] / q) * q)
    row = 4 * int(np.prod(s["shape"][1:]))
    for k in others:
        assert not rep.machine.read_map[s["addr"] + k * row:s["addr"] + (k + 1) * row].any()


def test_subset_labels_are_class_ids(comp):
    x = comp.example_input.numpy()
    with pytest.raises(EdgecError, match=r"label 2 is 5, not one of the classes the "
                                         r"program was compiled for \(0, 3, 7\)"):
        run_step(comp.program, comp.target, x, np.array([0, 3, 5] + [7] * 13), 0)
    out, _ = run_step(comp.program, comp.target, x, np.array([0, 3, 7, 7] * 4), 0)
    assert out["logits"].shape == (16, 3)


def test_subset_finetune_learns():
    import sys
    sys.path.insert(0, os.path.join(ROOT, "examples", "lenet"))
    from data import digits
    x, y = digits()
    sel = np.isin(y, IDS)
    xs, ys = x[sel][:160].astype(np.float32), y[sel][:160].astype(np.int64)
    xs = (xs.max() - xs).astype(np.float32)        # a user domain: inverted contrast
    c = compile_model(LENET, None, lr=0.05, classes=IDS)
    res = finetune(c, xs, ys, 20, seed=0)
    assert np.mean(res.losses[-4:]) < np.mean(res.losses[:4])
    with pytest.raises(EdgecError, match="not one of the compiled classes"):
        finetune(c, x[:32].astype(np.float32), y[:32].astype(np.int64), 1)
    # the saved state_dict is the whole model: loads into the original
    m = type(c.model)()
    m.load_state_dict(res.state_dict, strict=True)
    a, b = m.state_dict()["fc2.weight"], c.model.state_dict()["fc2.weight"]
    assert torch.allclose(a[1], b[1], atol=1e-4)           # (its master's rounding only)
    assert not torch.allclose(a[3], b[3], atol=1e-4)       # a subset row was trained
