"""edgec finetune: many steps on one emulator machine (weights stay in DDR), state_dict out."""
import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgec.compiler.workflows.cli import main
from edgec.compiler.driver import compile_model
from edgec.compiler.frontend.load import load_model
from edgec.compiler.workflows.finetune import accuracy, batch_rows, check_data, finetune
from edgec.isa.errors import EdgecError
from edgec.runtime_emu.host import Session, read_symbol, run_step
from edgec.runtime_emu.machine import Machine

ROOT = Path(__file__).resolve().parents[2]
LENET = str(ROOT / "examples" / "lenet" / "model.py")
MASK = str(ROOT / "examples" / "lenet" / "user.mask")
sys.path.insert(0, str(ROOT / "examples" / "lenet"))
from data import digits  # noqa: E402

X, Y = digits()
XTR, YTR = X[1216:1500], Y[1216:1500]        # held out from pretraining (first 1200 rows)
XEV, YEV = X[1500:], Y[1500:]


@pytest.fixture(scope="module")
def comp():
    return compile_model(LENET, MASK, lr=0.05)


def _initial_params(c):
    """name -> float64 master value from the program's initial DDR image."""
    m = Machine(c.program, c.target)
    out = {}
    for p in c.program.meta["params"]:
        e = c.program.symbol(p["master"])["exp"]
        out[p["name"]] = read_symbol(m, p["master"]).astype(np.float64).reshape(
            p["shape"]) * 2.0 ** e
    return out, m


def test_finetune_equals_session_steps_and_state_carries(comp):
    k, seed, n = 3, 7, comp.example_input.shape[0]
    res = finetune(comp, XTR, YTR, k, seed=seed)
    s = Session(comp.program, comp.target)
    outs = []
    for i in range(k):
        r = batch_rows(i, n, len(XTR))
        outs.append(s.step(XTR[r], YTR[r], seed=seed + i))
    assert res.losses == [float(o["loss"]) for o in outs]
    for name, v in res.params.items():
        np.testing.assert_array_equal(v, outs[-1][f"param/{name}"])
    assert s.totals["instructions"] == k * s.machine.counters["instructions"]

    # step 2 on a FRESH machine (initial weights) differs: the session carried state over
    r = batch_rows(1, n, len(XTR))
    fresh, _ = run_step(comp.program, comp.target, XTR[r], YTR[r], seed=seed + 1)
    assert any(not np.array_equal(fresh[f"param/{p}"], outs[1][f"param/{p}"])
               for p in res.params)
    # ... and equals a fresh machine whose initial image is the DDR step 1 left, so the
    # per-run reset is complete (nothing but DDR survives a step)
    s2 = Session(comp.program, comp.target)
    r0 = batch_rows(0, n, len(XTR))
    s2.step(XTR[r0], YTR[r0], seed=seed)
    img = bytes(s2.machine.ddr[:len(comp.program.data)])
    again, _ = run_step(dataclasses.replace(comp.program, data=img), comp.target,
                        XTR[r], YTR[r], seed=seed + 1)
    for key in outs[1]:
        np.testing.assert_array_equal(again[key], outs[1][key], err_msg=key)


def test_state_dict_loads_and_masked_channels_unchanged(comp):
    res = finetune(comp, XTR, YTR, 5, seed=0)
    model = type(comp.model)()
    model.load_state_dict(res.state_dict, strict=True)
    mask = comp.mask
    for name, v in res.params.items():
        got, want = model.state_dict()[name].numpy(), v.copy()
        layer = name.rpartition(".")[0]
        if layer in mask:      # the saved model is the pruned one: pruned rows are zero
            drop = np.ones(want.shape[0], dtype=bool)
            drop[mask[layer]] = False
            want[drop] = 0
        np.testing.assert_array_equal(got, want)
    acc = accuracy(comp.model, XEV, YEV, res.state_dict)
    assert 0.0 <= acc <= 100.0
    init, m = _initial_params(comp)
    for p in comp.program.meta["params"]:
        name, v = p["name"], res.params[p["name"]].astype(np.float64)
        keep = np.zeros(v.shape, dtype=bool)
        rows = read_symbol(m, p["out_tab"]).reshape(-1) if p.get("out_tab") else \
            np.arange(v.shape[0])
        if p.get("in_tab"):
            cols = read_symbol(m, p["in_tab"]).reshape(-1)
            blk = int(p.get("in_block") or 1)
            cc = (cols[:, None] * blk + np.arange(blk)[None, :]).reshape(-1)
            keep[rows[:, None], cc[None, :]] = True
        else:
            keep[rows] = True
        assert (~keep).any() or name.startswith("fc2"), name
        np.testing.assert_array_equal(v[~keep], init[name][~keep], err_msg=name)
        assert not np.array_equal(v[keep], init[name][keep]), name   # trained ones moved


def test_training_lowers_loss(comp):
    res = finetune(comp, XTR, YTR, 30, seed=0)
    assert np.mean(res.losses[-5:]) < np.mean(res.losses[:5]), res.losses


def test_check_data_errors():
    good = (XTR[:20], YTR[:20])
    check_data(*good, (1, 8, 8), 10, 16, "d")
    bad = [((XTR[:20].astype(np.float64), YTR[:20]), "float32"),
           ((XTR[:20, :, :4], YTR[:20]), "shape"),
           ((XTR[:20], YTR[:20].astype(np.float32)), "integer"),
           ((XTR[:20], YTR[:19]), "one label per row"),
           ((XTR[:10], YTR[:10]), "at least 16"),
           ((XTR[:20], np.where(np.arange(20) == 3, 10, YTR[:20])), r"y\[3\] = 10")]
    for (x, y), msg in bad:
        with pytest.raises(EdgecError, match=msg):
            check_data(x, y, (1, 8, 8), 10, 16, "d")


def test_cli_finetune_frozen_and_bad_data(tmp_path, capsys):
    tr, ev, out = tmp_path / "train.npz", tmp_path / "test.npz", tmp_path / "tuned.pt"
    np.savez(tr, x=XTR, y=YTR)
    np.savez(ev, x=XEV, y=YEV)
    rc = main(["finetune", LENET, "--mask", MASK, "--train", "fc*", "--lr", "0.05",
               "--data", str(tr), "--eval", str(ev), "--steps", "5", "-o", str(out)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "pretrained" in cap.out and "tuned" in cap.out and "step 5/5" in cap.err
    sd = torch.load(out, weights_only=True)
    orig = load_model(LENET)[0].state_dict()
    assert list(sd) == list(orig)
    for k in orig:
        if k.startswith("fc"):
            continue
        layer = k.rpartition(".")[0]
        want = orig[k].clone()
        if layer in ("conv1", "conv2"):                    # pruned channels are zeroed
            kept = {"conv1": range(6), "conv2": [0, 1, 2, 3, 6, 8, 9, 10, 11]}[layer]
            drop = torch.ones(want.shape[0], dtype=torch.bool)
            drop[list(kept)] = False
            want[drop] = 0
        assert torch.equal(sd[k], want), k                 # frozen: otherwise untouched
    assert not torch.equal(sd["fc2.weight"], orig["fc2.weight"])

    bad = tmp_path / "bad.npz"
    np.savez(bad, x=XTR)
    rc = main(["finetune", LENET, "--data", str(bad), "--steps", "2", "-q",
               "-o", str(tmp_path / "never.pt")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "missing array 'y'" in err, err
    assert not (tmp_path / "never.pt").exists()
