"""benchmarks/parity.py's core on a tiny configuration (examples/personalize, a 50%
bn-gamma mask, a few steps): the float32 path is plain SGD on the device's batches, the
mask stays applied in both paths, and the clipped path uses the device's gradient bounds."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgec.compiler.driver import compile_model
from edgec.compiler.workflows.finetune import finetune
from edgec.compiler.workflows.floatmodel import masked_float_model, pruned_channels
from edgec.runtime_emu.host import Session, read_symbol

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import parity  # noqa: E402

STEPS, LR = 6, 0.05


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg = parity.CONFIGS["personalize"]
    xtr, ytr, xte, yte = cfg.data()
    mask = parity.make_mask(cfg.model, 0.5, tmp_path_factory.mktemp("mask"))
    c = compile_model(str(cfg.model), mask, lr=LR)
    o = parity.data_order(1, len(xtr))
    return c, xtr[o][:64], ytr[o][:64], xte, yte


def _sgd_reference(c, x, y, steps, lr):
    """An independent loop: torch.optim.SGD on the masked model, the device's batches."""
    model = masked_float_model(c).eval()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    n = int(c.example_input.shape[0])
    for i in range(steps):
        r = (i * n + np.arange(n)) % len(x)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.from_numpy(x[r])),
                                          torch.from_numpy(y[r])).backward()
        opt.step()
    return model.state_dict()


def _pruned_rows(c):
    """{parameter name: boolean array of its pruned output rows} (masked layers and the
    BatchNorms that follow them)."""
    out = {}
    sd = c.model.state_dict()
    for layer, kept in pruned_channels(c).items():
        for leaf in ("weight", "bias"):
            name = f"{layer}.{leaf}"
            if name in sd:
                drop = np.ones(sd[name].shape[0], dtype=bool)
                drop[kept] = False
                out[name] = drop
    return out


def test_data_order_is_a_permutation_and_seed0_is_stored_order():
    np.testing.assert_array_equal(parity.data_order(0, 10), np.arange(10))
    p = parity.data_order(2, 50)
    assert sorted(p) == list(range(50)) and not np.array_equal(p, np.arange(50))
    assert not np.array_equal(p, parity.data_order(1, 50))


def test_fp32_equals_torch_sgd_and_keeps_the_mask(setup):
    c, x, y, _, _ = setup
    _, raw = parity.float_finetune(c, x, y, STEPS, LR)
    ref = _sgd_reference(c, x, y, STEPS, LR)
    init = c.model.state_dict()
    moved = 0
    for name, v in ref.items():
        assert torch.equal(raw[name], v), name
        moved += not torch.equal(v, init[name])
    assert moved >= 10                        # it trained
    rows = _pruned_rows(c)
    assert len(rows) >= 6 and all(d.any() for d in rows.values())
    for name, drop in rows.items():           # pruned channels never move
        assert torch.equal(raw[name][drop], init[name][drop]), name
        assert not torch.equal(raw[name][~drop], init[name][~drop]), name
    # a different data order is a different run
    _, other = parity.float_finetune(c, x[::-1].copy(), y[::-1].copy(), STEPS, LR)
    assert not all(torch.equal(other[k], raw[k]) for k in raw)


def test_grad_bounds_are_the_device_saturation(setup):
    c, x, y, _, _ = setup
    b = parity.grad_bounds(c.program)
    assert set(b) == {p["name"] for p in c.program.meta["params"]}
    n = int(c.example_input.shape[0])
    out = Session(c.program, c.target).step(x[:n], y[:n], seed=3)
    for name, bound in b.items():
        g = np.abs(out[f"grad/{name}"])
        assert g.max() <= bound, name
        e = c.program.symbol(f"grad:{name}")["exp"]
        assert bound == 127 * 2.0 ** e
    # the recorded int8 saturation is what the raw gradient integers say
    col = parity.StepStats(c.program)
    col(0, out)
    want = sum(int((np.abs(out[f"sym/grad:{k}"]) == 127).sum()) for k in b)
    assert col.saturated == want and col.elements == sum(
        out[f"sym/grad:{k}"].size for k in b)
    acts = [k for k in col.acts if not k.startswith("sym/grad:")]
    assert acts == col.acts and "sym/fc2.out" in acts and "sym/conv1.out" in acts
    sat = sum(int((np.abs(out[k]) == 127).sum()) for k in acts)
    assert col.act[0] == pytest.approx(sat / sum(out[k].size for k in acts))


@pytest.mark.slow
def test_clip_clips(setup):
    c, x, y, _, _ = setup
    bounds = parity.grad_bounds(c.program)
    _, plain = parity.float_finetune(c, x, y, STEPS, LR)
    st = {}
    _, dev = parity.float_finetune(c, x, y, STEPS, LR, bounds, st)
    assert st["elements"] > 0 and 0 <= st["clipped"] <= st["elements"]
    huge = {k: 1e30 for k in bounds}
    _, same = parity.float_finetune(c, x, y, STEPS, LR, huge)
    assert all(torch.equal(same[k], plain[k]) for k in plain)
    t = 1e-4
    tiny = {k: t for k in bounds}
    st = {}
    _, clipped = parity.float_finetune(c, x, y, STEPS, LR, tiny, st)
    assert st["clipped"] > 0             # (pruned channels have zero gradients)
    init = c.model.state_dict()
    for k in bounds:   # each step moves a parameter by at most lr * bound (+ rounding)
        d = (clipped[k] - init[k]).abs().max().item()
        ulp = torch.finfo(torch.float32).eps * init[k].abs().max().item()
        assert d <= STEPS * (LR * t + ulp), k
    assert any(not torch.equal(clipped[k], plain[k]) for k in bounds)


def test_int8_path_is_edgec_finetune_and_keeps_the_mask(setup):
    c, x, y, xte, yte = setup
    col = parity.StepStats(c.program)
    seen = []
    res = finetune(c, x, y, 3, seed=5, on_step=lambda i, o: (seen.append(i), col(i, o)))
    assert seen == [0, 1, 2] and col.elements == 3 * sum(
        int(np.prod(c.program.symbol(p["grad"])["shape"])) for p in c.program.meta["params"])
    plain = finetune(c, x, y, 3, seed=5)           # the hook changes nothing
    assert res.losses == plain.losses
    for k in res.params:
        np.testing.assert_array_equal(res.params[k], plain.params[k])
    # pruned rows of the masters never move; the tuned state_dict zeroes them
    m = Session(c.program, c.target).machine
    init = {p["name"]: read_symbol(m, p["master"]).astype(np.float64).reshape(p["shape"])
            * 2.0 ** c.program.symbol(p["master"])["exp"] for p in c.program.meta["params"]}
    for name, drop in _pruned_rows(c).items():
        v = res.params[name].astype(np.float64)
        np.testing.assert_array_equal(v[drop], init[name][drop], err_msg=name)
        assert not np.array_equal(v[~drop], init[name][~drop]), name
        assert (res.state_dict[name].numpy()[drop] == 0).all(), name


def test_saturation_summary_hook():
    assert parity.saturation_summary([{"loss": 1.0}, {"loss": 0.5}]) is None
    assert parity.saturation_summary([]) is None
    R = 2                       # two registers: rows E, P, C, [S Q], [S' Q'], lo, hi, thr
    t0 = np.zeros(10 * R, np.int64)
    t0[:R] = t0[R:2 * R] = [-5, -3]
    t1 = t0.copy()
    t1[:R] = [-4, -3]            # register 0 coarser after a step with 7 + 2 saturations
    t1[5 * R:7 * R] = [7, 127, 2, 90]
    t2 = t1.copy()
    t2[R:2 * R], t2[:R] = t1[:R], [-4, -4]       # register 1 finer
    t2[5 * R:7 * R] = [0, 60, 0, 50]
    s = parity.saturation_summary([{"xtab": t1}, {"xtab": t2}])
    assert s["steps"] == 2 and s["saturated_per_step"] == 4.5
    assert s["moves_coarser"] == 0 and s["moves_finer"] == 1
    assert parity.saturation_summary([t0, t1])["moves_coarser"] == 1


@pytest.mark.slow
def test_quick_benchmark_end_to_end(tmp_path):
    out = tmp_path / "q.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks/parity.py"), "--quick",
                        "--steps", "4", "--config", "personalize", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    import json
    res = json.loads(out.read_text())
    (cfg,) = res["configs"]
    assert cfg["config"] == "personalize" and cfg["steps"] == 4 and cfg["mask"]
    for k in ("acc_fp32", "acc_fp32_clip", "acc_int8"):
        assert len(cfg[k]["per_seed"]) == 1 and 0 <= cfg[k]["mean"] <= 100
    assert cfg["int8_minus_fp32"]["mean"] == pytest.approx(
        cfg["acc_int8"]["mean"] - cfg["acc_fp32"]["mean"])
    sat = cfg["saturation"][0]          # the device's exponent table saw the run
    assert sat["steps"] == 4 and sat["saturated_per_step"] >= 0
    assert "personalize" in r.stdout and "int8-fp32" in r.stdout
