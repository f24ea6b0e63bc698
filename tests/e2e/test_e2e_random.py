"""Acceptance: verify is bit-exact on >= 50 seeded random models (depths, widths not
multiple of the MAC array, kernels, strides, paddings, masks, batch sizes), compiled for
a tiny target so every nest is split into many tiles."""
from pathlib import Path

import pytest

from edgec.compiler.driver import compile_module
from edgec.compiler.workflows.floatmodel import float_grads
from edgec.compiler.workflows.verify import make_batch, verify
from edgec.isa.target import load_target

from randmodels import random_case

TINY = load_target(Path(__file__).parents[1] / "data" / "tiny.toml")


@pytest.mark.parametrize("seed", range(52))
def test_random_model_bit_exact(seed):
    model, example, mask = random_case(seed)
    c = compile_module(model, example, "rand.py", mask, TINY, lr=0.05, seed=seed)
    rep = verify(c, seed=seed, batch_seed=seed)
    assert rep.bit_exact, [(m.symbol, m.index, m.ref, m.emu, m.origin) for m in rep.mismatches]
    assert len(rep.checked) >= 6
    # the fixed-point step points the same way as float autograd, unless the whole float
    # gradient is below one step of its int8 format (stochastic rounding may then give 0)
    fg = float_grads(c, *make_batch(c, seed))
    g = c.graph
    for name, cos, _ in rep.fidelity:
        step = 2.0 ** g.values[g.outputs[f"grad:{name}"]].exp
        if float(fg[name].abs().max()) >= step:
            assert cos > 0.5, (name, cos)


from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=8, deadline=None, derandomize=True)
@given(seed=st.integers(1000, 10**6), lr=st.sampled_from([0.001, 0.01, 0.1]))
def test_property_random_models_verify_bit_exact(seed, lr):
    """Property (hypothesis): any generated small model verifies bit-exact."""
    model, example, mask = random_case(seed)
    c = compile_module(model, example, "rand.py", mask, TINY, lr=lr, seed=seed)
    rep = verify(c, seed=seed, batch_seed=seed + 1)
    assert rep.bit_exact, [(m.symbol, m.index, m.origin) for m in rep.mismatches]
