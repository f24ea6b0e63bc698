"""Grouped convs with several channels per group (RegNet-style), bit for bit: the schedule
search must keep a tile's groups whole (the group rule, compiler/backend/tilefit.py), on
seeded random grouped blocks (tiny target: every grouped nest splits) and on RegNetX's
widest stage (25 groups of 16 channels, default target)."""
from pathlib import Path

import pytest
import torch
from torch import nn

from edgec.compiler.driver import compile_module
from edgec.compiler.workflows.verify import verify
from edgec.isa.target import load_target

from randblocks import random_grouped_case

TINY = load_target(Path(__file__).parents[1] / "data" / "tiny.toml")


def _bit_exact(c, seed=0):
    rep = verify(c, seed=seed, batch_seed=seed, sr_seeds=1)
    assert rep.bit_exact, [(m.symbol, m.index, m.ref, m.emu, m.origin) for m in rep.mismatches]
    assert any(s.startswith("grad:") for s in rep.checked)


@pytest.mark.parametrize("search,seed", [("greedy", s) for s in range(24)]
                         + [("exhaustive", s) for s in range(6)])
def test_random_grouped_bit_exact(search, seed):
    model, example, mask = random_grouped_case(seed)
    c = compile_module(model, example, "rand.py", mask, TINY, lr=0.05, seed=seed,
                       search=search)
    assert any(g.attrs.get("groups", 1) > 1 for g in c.graph.nodes if g.op == "conv_wg")
    _bit_exact(c, seed)


def test_regnet_group_width_bit_exact():
    """A grouped 3x3 conv, 400 channels in groups of 16, stride 1, batch 2 (RegNetX-400MF's
    last stage at 32x32 input), on the default target."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(400, 400, 3, padding=1, groups=25, bias=False),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(400, 10)).eval()
    c = compile_module(model, torch.randn(2, 400, 1, 1), "regnet.py", None,
                       load_target(None))
    wg = next(n for n in c.nests if n.op == "conv_wg")
    assert wg.tiles["g"] < 25 and wg.tiles["g"] > 1        # the groups are split by tile
    _bit_exact(c)
