"""The per-layer side of `edgec report`: the CSV (ops, channels, tiles, buffer occupancy,
bytes, cycles), the labels and ridge point of the roofline plot, and the order of the
outputs when matplotlib is missing."""
from __future__ import annotations

import csv
import io
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from edgec.compiler.driver import compile_model
from edgec.compiler.report import _labelled, _roofline_points, layer_csv, program_report
from edgec.compiler.workflows.cli import main
from edgec.isa.encoding import decode_all
from edgec.isa.table import BY_NAME

ROOT = Path(__file__).resolve().parents[3]
LENET = ROOT / "examples/lenet/model.py"
MASK = ROOT / "examples/lenet/user.mask"


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    c = compile_model(str(LENET), str(MASK))
    prog = tmp_path_factory.mktemp("rep") / "prog.bin"
    prog.write_bytes(c.blob)
    rows = list(csv.DictReader(io.StringIO(layer_csv(program_report(c.program, c.target)))))
    return c, prog, rows


def test_csv_rows_sum_to_the_program(lenet):
    c, _, rows = lenet
    assert sum(int(r["instructions"]) for r in rows) == c.program.n_instr
    assert abs(sum(float(r["cycles_pct"]) for r in rows) - 100) < 0.1
    macs = sum(BY_NAME[i.name].work(f)[0] for i, f in decode_all(c.program.code))
    assert sum(int(r["macs"]) for r in rows) == macs


def _kept_counts(text: str) -> dict:
    """Kept channels per layer of a mask file of `layer: a-b, c d` lines (read here
    without the compiler's parser)."""
    out = {}
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if line:
            layer, items = line.split(":")
            n = 0
            for item in items.replace(",", " ").split():
                lo, _, hi = item.partition("-")
                n += int(hi or lo) - int(lo) + 1
            out[layer.strip()] = n
    return out


def test_csv_channels_follow_the_mask(lenet):
    import torch  # noqa: F401  (the model file needs it)
    _, _, rows = lenet
    sys.path.insert(0, str(LENET.parent))
    try:
        from model import LeNet  # the example's module, for the layers' widths
    finally:
        sys.path.remove(str(LENET.parent))
    widths = {n: m.weight.shape[0] for n, m in LeNet().named_modules()
              if hasattr(m, "weight") and m.weight is not None}
    kept = _kept_counts(MASK.read_text())
    seen = set()
    for r in rows:
        if r["layer"] in widths:
            assert int(r["total_channels"]) == widths[r["layer"]], r
            assert int(r["kept_channels"]) == kept.get(r["layer"], widths[r["layer"]]), r
            seen.add(r["layer"])
    assert seen == set(widths) and set(kept) < seen


def test_csv_tiles_and_buffer_occupancy(lenet):
    c, _, rows = lenet
    mac_by_layer = Counter()
    for (ins, _f), origin in zip(decode_all(c.program.code), c.program.meta["origin"]):
        if BY_NAME[ins.name].unit == "mac":
            mac_by_layer[origin.split()[1]] += 1
    tiles = Counter()
    for r in rows:
        tiles[r["layer"]] += int(r["tiles"])
        for b in ("ibuf", "wbuf", "abuf"):
            assert 0 <= float(r[f"{b}_pct"]) <= 100
    assert +tiles == mac_by_layer
    conv1_fp = next(r for r in rows if r["layer"] == "conv1" and r["pattern"] == "FP")
    assert float(conv1_fp["ibuf_pct"]) > 0 and float(conv1_fp["wbuf_pct"]) > 0


def test_plot_names_the_biggest_and_the_slowest(lenet):
    c, _, _ = lenet
    pts = _roofline_points(program_report(c.program, c.target))
    named = _labelled(pts)
    assert max(pts, key=lambda p: p["macs"]) in named
    total = sum(p["macs"] for p in pts)
    worst = min((p for p in pts if p["macs"] >= total / 100), key=lambda p: p["of_roof"])
    assert worst in named and len(named) <= 10
    assert all(0 < p["of_roof"] <= 1.0 + 1e-9 for p in pts)     # nothing above the roof


def test_missing_matplotlib_writes_the_rest_first(lenet, tmp_path, capsys, monkeypatch):
    _, prog, _ = lenet
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    js, cs, png = tmp_path / "r.json", tmp_path / "r.csv", tmp_path / "r.png"
    rc = main(["report", str(prog), "--json", str(js), "--csv", str(cs), "--plot", str(png)])
    cap = capsys.readouterr()
    assert rc == 1 and "TOTAL overall" in cap.out
    assert "pip install 'edgec[plot]'" in cap.err and "Traceback" not in cap.err
    assert json.loads(js.read_text())["groups"] and cs.read_text().startswith("layer,")
    assert not png.exists()
