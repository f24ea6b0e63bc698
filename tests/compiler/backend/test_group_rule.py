"""The group rule of MAC tiles (compiler/backend/tilefit.py): a tile of several groups holds
their whole channels.  Codegen addresses a tile's channels as one run from its first group
on, so the shrink heuristic, the schedule search (greedy and exhaustive), resumed .loop
files and codegen all keep it.  Seeded random grouped geometries and targets."""
import copy
import random
import re
import textwrap

import pytest

from edgec.compiler.backend import tilefit
from edgec.compiler.backend.schedule import search
from edgec.compiler.backend.tilefit import PRIORITY, fitted, shrink, tile_fits
from edgec.compiler.driver import compile_model, emit_program
from edgec.compiler.resume import compile_ir
from edgec.isa.errors import EdgecError
from edgec.isa.target import Target, load_target

SPATIAL = {"conv": "oh", "conv_eb": "ih", "conv_wg": "oh"}


def _whole_groups(G, t):
    """The rule, written out independently of tilefit."""
    return t["g"] == 1 or (t["ci"] == G["C"] // G["G"] and t["co"] == G["O"] // G["G"])


def _random_nest(rng):
    """(geometry, dims, target) of a grouped 3x3 (or 1x1) conv and a small target."""
    groups, cg = rng.randint(2, 12), rng.choice([2, 3, 4, 8, 16])
    og = rng.choice([cg, cg, 2 * cg])
    n, h = rng.randint(1, 3), rng.randint(1, 8)
    k = rng.choice([3, 3, 1])
    s = rng.choice([1, 1, 2]) if h >= 4 else 1
    oh = (h + 2 * (k // 2) - k) // s + 1
    G = dict(N=n, C=groups * cg, O=groups * og, H=h, W=h, OH=oh, OW=oh, kh=k, kw=k,
             sh=s, sw=s, ph=k // 2, pw=k // 2, G=groups)
    buf = rng.choice([768, 1536, 4096, 16384])
    tg = Target("rand", rng.choice([4, 16]), rng.choice([4, 16]), buf, buf // 2,
                rng.choice([256, 1024, 4096]), 1 << 24, 8, 16, 8)
    return G, tg


def _dims(G, base):
    sp = SPATIAL[base]
    return {"n": G["N"], "g": G["G"], "co": G["O"] // G["G"], "ci": G["C"] // G["G"],
            sp: G["H"] if sp == "ih" else G["OH"]}


@pytest.mark.parametrize("seed", range(40))
def test_search_keeps_whole_groups(seed):
    """Heuristic start, greedy and exhaustive search: every tile of several groups holds
    whole groups (before the rule was shared, greedy picked e.g. g tile 7, ci tile 8 for
    16-channel groups)."""
    rng = random.Random(seed)
    G, tg = _random_nest(rng)
    for base in ("conv", "conv_eb", "conv_wg"):
        dims = _dims(G, base)

        def fits(t, k):
            return tile_fits(base, G, t, tg, k)
        try:
            start = fitted(lambda f: shrink(dims, {}, f, PRIORITY[base], "x"), fits, "x")
        except EdgecError:
            continue                        # nothing fits this target: not this test's case
        assert _whole_groups(G, start), (base, start)
        k = 2 if fits(start, 2) else 1
        for mode in ("greedy", "exhaustive"):
            t = search(base, G, dims, {}, tg, False, mode, start, "x", k)
            assert _whole_groups(G, t), (seed, base, mode, G, t)
            assert tile_fits(base, G, t, tg, k)


def test_search_keeps_whole_groups_regnet_width():
    """RegNetX-400MF's last stage: 25 groups of 16 channels at 1x1, batch 2, on the default
    target, where the search used to split the weight-gradient tile's groups."""
    G = dict(N=2, C=400, O=400, H=1, W=1, OH=1, OW=1, kh=3, kw=3, sh=1, sw=1, ph=1, pw=1,
             G=25)
    tg = load_target(None)
    dims = _dims(G, "conv_wg")
    start = fitted(lambda f: shrink(dims, {}, f, PRIORITY["conv_wg"], "x"),
                   lambda t, k: tile_fits("conv_wg", G, t, tg, k), "x")
    for mode in ("greedy", "exhaustive"):
        t = search("conv_wg", G, dims, {}, tg, False, mode, start, "x", 2)
        assert _whole_groups(G, t), (mode, t)


def test_group_rule_error():
    G = dict(C=32, O=64, G=4)
    rule = tilefit.group_rule_error
    assert rule(G, dict(g=1, ci=3, co=5)) is None        # one group: any cut
    assert rule(G, dict(g=3, ci=8, co=16)) is None       # whole groups
    for t in (dict(g=2, ci=4, co=16), dict(g=2, ci=8, co=8), dict(g=4, ci=1, co=1)):
        e = rule(G, t)
        assert e and f"g tile {t['g']}" in e and "whole channels" in e, e
        assert not tilefit.mac_tile_ok("conv", dict(G, N=1, H=1, W=1, OH=1, OW=1, kh=1,
                                                    kw=1, sh=1, sw=1, ph=0, pw=0),
                                       dict(t, n=1, oh=1), load_target(None))


MODEL = textwrap.dedent('''
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(2, 16, 1)
            self.grp = nn.Conv2d(16, 16, 3, padding=1, groups=4, bias=False)
            self.gap = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(16, 3)

        def forward(self, x):
            x = torch.relu(self.grp(torch.relu(self.stem(x))))
            return self.fc(torch.flatten(self.gap(x), 1))

    torch.manual_seed(0)
    model = Net()
    example_input = torch.randn(2, 2, 4, 4)
''')


@pytest.fixture(scope="module")
def dumped(tmp_path_factory):
    d = tmp_path_factory.mktemp("grp")
    (d / "model.py").write_text(MODEL)
    c = compile_model(str(d / "model.py"), dump_ir=str(d / "ir"))
    return d, c


def test_resume_rejects_split_groups(dumped, tmp_path):
    """A hand-edited .loop whose grouped tile splits its groups: a located error naming the
    nest and the rule, and nothing written."""
    d, _ = dumped
    text = (d / "ir" / "05-tile.loop").read_text()
    m = re.search(r"^nest (\d+) conv_wg @grp \{.*\}$", text, re.M)
    line = m.group(0)
    edited = re.sub(r"g: 4 tile \d+", "g: 4 tile 2", line)
    edited = re.sub(r"ci: 4 tile \d+", "ci: 4 tile 2", edited)
    assert edited != line
    p = tmp_path / "edited.loop"
    p.write_text(text.replace(line, edited))
    with pytest.raises(EdgecError) as e:
        compile_ir(str(p))
    ln = text[:text.index(line)].count("\n") + 1
    msg = str(e.value)
    assert msg.startswith(f"{p}:{ln}:1: nest {m.group(1)} (conv_wg) @grp: g tile 2 with "
                          "co tile 4, ci tile 2"), msg
    assert "whole channels" in msg and "\n" not in msg


def test_codegen_refuses_split_groups(dumped):
    """Codegen checks the rule itself (the nests it gets from elsewhere than the tile pass
    or resume)."""
    _, c = dumped
    nests = list(c.nests)
    k = next(i for i, n in enumerate(nests) if n.op == "conv" and n.layer == "grp")
    bad = copy.deepcopy(nests[k])
    bad.tiles.update(g=2, co=2)
    nests[k] = bad
    with pytest.raises(EdgecError, match=r"conv grp .*nest \d+ \(conv\): g tile 2 with co "
                                         r"tile 2, ci tile 4"):
        emit_program(c.graph, nests, c.target, 0.01, 0, c.model, c.example_input, c.mask,
                     lambda m: None)
