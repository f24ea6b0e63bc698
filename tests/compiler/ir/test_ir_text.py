"""Inspectable IR: canonical text forms of the graph and loop IR (compiler/ir/text.py),
`compile --dump-ir`, `edgec ir`, and resuming the pipeline from a (hand-edited) dump."""
from __future__ import annotations

import copy
import os
from pathlib import Path
import re

import numpy as np
import pytest

from edgec.compiler.workflows.cli import main
from edgec.compiler.driver import compile_module
from edgec.compiler.frontend.load import load_model
from edgec.compiler.ir.text import Dumper, format_ir, ir_diff, parse_ir, read_ir
from edgec.compiler.resume import compile_ir
from edgec.compiler.workflows.verify import verify
from edgec.isa.target import load_target

ROOT = str(Path(__file__).resolve().parents[3])
MODEL = os.path.join(ROOT, "examples", "lenet", "model.py")
MASK = os.path.join(ROOT, "examples", "lenet", "user.mask")
FILES = ["00-capture.ir", "01-prune.ir", "02-mask.ir", "03-quantize.ir", "04-update.ir", "05-tile.loop"]


@pytest.fixture(scope="module")
def dumped(tmp_path_factory):
    """Compile lenet with its mask, dumping every stage; keep a copy of each stage's IR."""
    d = str(tmp_path_factory.mktemp("ir"))
    dumper = Dumper(d, dict(model=MODEL, mask=MASK, target=None, lr=0.01, seed=0))
    seen = {}

    def dump(stage, g, nests=None):
        dumper(stage, g, nests)
        seen[stage] = (copy.deepcopy(g), copy.deepcopy(nests))

    model, example = load_model(MODEL)
    c = compile_module(model, example, MODEL, MASK, load_target(None), lr=0.01, seed=0, dump=dump)
    return d, seen, c


def test_dump_files_in_pipeline_order(dumped):
    d, seen, _ = dumped
    assert sorted(os.listdir(d)) == FILES
    assert list(seen) == ["capture", "prune", "mask", "quantize", "update", "tile"]


@pytest.mark.parametrize("name", FILES)
def test_edgec_ir_prints_dump_canonically(dumped, name, capsys):
    d, _, _ = dumped
    path = os.path.join(d, name)
    assert main(["ir", path]) == 0
    with open(path) as f:
        assert capsys.readouterr().out == f.read()


@pytest.mark.parametrize("name", FILES)
def test_round_trip_structural(dumped, name):
    d, seen, _ = dumped
    stage = name[3:].split(".")[0]
    g, nests = seen[stage]
    f = read_ir(os.path.join(d, name))
    assert f.stage == stage
    assert ir_diff(g, f.graph, nests, f.nests) is None
    text = open(os.path.join(d, name)).read()
    assert format_ir(parse_ir(text)) == text


def test_dump_shows_formats_views_and_locations(dumped):
    d, _, _ = dumped
    q = open(os.path.join(d, "03-quantize.ir")).read()
    assert re.search(r"%x: i8<2\^-?\d+>\[16,1,8,8\]", q)
    assert 'in_idx=[0..3, 6, 8..11], in_block=4, out_tab="fc1", in_tab="conv2"' in q
    assert re.search(r'@conv1 at "model.py:\d+"', q)
    assert 'source model="' in q and "lr=0.01 seed=0" in q
    assert "f32[" in open(os.path.join(d, "00-capture.ir")).read()
    loop = open(os.path.join(d, "05-tile.loop")).read()
    assert re.search(r"^nest \d+ conv @conv1 \{n: 16 tile \d+, g: 1 tile 1, co: 6 tile 6", loop, re.M)


def test_resume_reproduces_program(dumped):
    d, seen, c = dumped
    r = compile_ir(os.path.join(d, "03-quantize.ir"))
    assert r.blob == c.blob
    for k, v in c.graph.meta["init"].items():      # re-derived initial weights
        assert np.array_equal(r.graph.meta["init"][k], v) and r.graph.meta["init"][k].dtype == v.dtype
    assert compile_ir(os.path.join(d, "05-tile.loop")).blob == c.blob


def test_hand_edited_tile_is_honoured_and_bit_exact(dumped, tmp_path):
    d, _, c = dumped
    text = open(os.path.join(d, "05-tile.loop")).read()
    m = re.search(r"^nest (\d+) conv @conv1 \{(.*)\}$", text, re.M)
    co = int(re.search(r"co: (\d+) tile (\d+)", m.group(2)).group(2))
    line = m.group(0)
    edited = line.replace(f"co: 6 tile {co}", f"co: 6 tile {co // 2}")
    # and swap two parallel loops: the order is explicit
    edited = re.sub(r"(co: 6 tile \d+), (oh: \d+ tile \d+)", r"\2, \1", edited)
    assert edited != line
    p = tmp_path / "edited.loop"
    p.write_text(text.replace(line, edited))
    r = compile_ir(str(p))
    nest = next(n for n in r.nests if n.layer == "conv1" and n.op == "conv")
    assert nest.tiles["co"] == co // 2 and nest.order.index("oh") < nest.order.index("co")
    assert r.blob != c.blob
    rep = verify(r)
    assert rep.bit_exact and rep.checked


def _err(tmp_path, name, text, capsys, cmd="ir"):
    p = tmp_path / name
    p.write_text(text)
    args = ["ir", str(p)] if cmd == "ir" else ["compile", str(p), "-q", "-o",
                                              str(tmp_path / "o.bin")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("edgec: error: ") and "Traceback" not in err
    return err


def test_malformed_inputs_give_located_errors(dumped, tmp_path, capsys):
    d, _, _ = dumped
    upd = open(os.path.join(d, "04-update.ir")).read()
    loop = open(os.path.join(d, "05-tile.loop")).read()
    ln = lambda t, s: t[:t.index(s)].count("\n") + 1  # noqa: E731

    e = _err(tmp_path, "a.ir", upd.replace("= maxpool %relu.out {", "= maxpool %relu.out, {"),
             capsys)
    assert re.search(rf"a\.ir:{ln(upd, '= maxpool %relu.out {')}:\d+: unexpected '\{{'; "
                     r"expected a value", e)
    e = _err(tmp_path, "b.ir", upd.replace("= maxpool %relu.out", "= maxpol %relu.out"),
             capsys)
    assert "b.ir:" in e and "unknown op 'maxpol'" in e
    e = _err(tmp_path, "c.ir", upd.replace("= maxpool %relu.out", "= maxpool %nothere"),
             capsys)
    assert re.search(r"c\.ir:\d+:1: node \d+ \(maxpool in pool1\): input 'nothere'", e)
    e = _err(tmp_path, "d.ir", upd.replace("i8<2^", "i9<2^", 1), capsys)
    assert re.search(r"d\.ir:\d+:\d+: unknown dtype 'i9'", e)
    e = _err(tmp_path, "e.ir", upd.replace("{x=-6}", "{x=$}"), capsys)
    assert re.search(r"e\.ir:\d+:\d+: unexpected character '\$'; expected", e)
    e = _err(tmp_path, "f.ir", "", capsys)
    assert "f.ir:1:1: unexpected end of file; expected 'edgec'" in e
    # loop nests: invalid tile, reduction not innermost, tiles too large for buffers
    m = re.search(r"^nest \d+ conv @conv1 \{.*\}$", loop, re.M).group(0)
    nl = ln(loop, m)
    bad_tile = re.sub(r"co: 6 tile \d+", "co: 6 tile 7", m)
    e = _err(tmp_path, "g.loop", loop.replace(m, bad_tile), capsys)
    assert f"g.loop:{nl}:1: nest" in e and "tile co=7 invalid" in e
    bad_order = re.sub(r"(co: 6 tile \d+), (oh: \d+ tile \d+), (ci: \d+ tile \d+)",
                       r"\3, \1, \2", m)
    e = _err(tmp_path, "h.loop", loop.replace(m, bad_order), capsys)
    assert f"h.loop:{nl}:1:" in e and "must be innermost" in e
    e = _err(tmp_path, "i.loop", loop.replace(m, re.sub(r"^nest \d+", "nest 3", m)), capsys)
    assert f"i.loop:{nl}:1: nest 3 is a 'conv' nest but node 3 is 'maxpool'" in e
    # checked when resuming: extents must match the graph
    e = _err(tmp_path, "j.loop", loop.replace(m, re.sub(r"n: 16 tile \d+", "n: 8 tile 8", m)),
             capsys, cmd="compile")
    assert f"j.loop:{nl}:1:" in e and "do not match the graph" in e
