"""Performance report (compiler/report.py, `edgec report`): attribution of every
instruction to one (layer, pattern) group, and a static cost model equal to the
emulator's cycle counter, instruction by instruction."""
import dataclasses
import importlib.util
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from edgec.compiler.backend.stats import static_counts
from edgec.compiler.workflows.cli import main
from edgec.compiler.driver import compile_model
from edgec.compiler.pipeline import replay
from edgec.compiler.report import (PHASES, format_report, instr_cost, instruction_groups,
                                   program_report)
from edgec.isa.container import Program, write_program
from edgec.isa.encoding import decode_all, encode
from edgec.isa.target import load_target
from edgec.runtime_emu.host import run_step
from edgec.runtime_emu.machine import Machine

ROOT = Path(__file__).resolve().parents[3]
LENET = str(ROOT / "examples" / "lenet" / "model.py")
MASK = str(ROOT / "examples" / "lenet" / "user.mask")
SUMS = ("instructions", "macs", "ddr_bytes", "index_bytes", "cycles", "cycles_mac",
        "cycles_dma", "cycles_vector")


@pytest.fixture(scope="module")
def lenet():
    c = compile_model(LENET, MASK)
    x, y = np.asarray(c.example_input), np.arange(16) % 10
    _out, m = run_step(c.program, c.target, x, y, 0)
    return c, m.counters


@pytest.mark.slow
def test_totals_equal_static_counts_and_emulator(lenet):
    c, cnt = lenet
    rep = program_report(c.program, c.target, cnt)
    o = rep["totals"]["overall"]
    st = static_counts(c.emitter.words)
    assert (o["instructions"], o["macs"], o["ddr_bytes"]) == \
        (st["instructions"], st["macs"], st["ddr_bytes"])
    assert o["instructions"] == cnt["instructions"] == c.program.n_instr
    assert o["macs"] == cnt["macs"]
    assert o["cycles"] == cnt["cycles"]
    for unit in ("mac", "dma", "vector"):
        assert o["cycles_" + unit] == cnt["cycles_" + unit]
    # the emulator also counts the channel index tables and the seed word
    assert o["ddr_bytes"] + o["index_bytes"] == cnt["ddr_read_bytes"] + cnt["ddr_write_bytes"]
    assert o["index_bytes"] > 0            # the mask makes LDCH/STCH read tables
    assert rep["emulator"]["agrees"]
    assert "agrees with the static model" in format_report(rep)


BUSY = ("cycles_dma", "cycles_mac", "cycles_vector")


def _per_instruction_cycles(program, target):
    """(cost, end cycle) of every instruction as the emulator runs it."""
    m = Machine(program, target)
    out = []
    while not m.halted:
        before = sum(m.counters[k] for k in BUSY)
        ins = m.instrs[m.pc][0]
        m.step()
        end = m.timing.free["compute" if ins.name == "END" else ins.queue]
        out.append((sum(m.counters[k] for k in BUSY) - before, end))
    return out


def _static_cycles(program, target):
    instrs = decode_all(program.code)
    costs = [instr_cost(ins.name, f, target, i)["cycles"] for i, (ins, f) in enumerate(instrs)]
    ends = replay([i.name for i, _ in instrs],
                  [f["dep"] for _, f in instrs], costs, target.ddr_latency)
    return list(zip(costs, ends))


def test_cost_model_equals_emulator_per_instruction(lenet):
    c, cnt = lenet
    emu = _per_instruction_cycles(c.program, c.target)
    assert _static_cycles(c.program, c.target) == emu
    # the queues overlap: the program takes less than the serial sum of its costs
    assert emu[-1][1] == cnt["cycles"] < sum(cyc for cyc, _ in emu)


def _hand_program(tg):
    """A few instructions LeNet lacks (grouped EB/WG MACs, VADD, RQ stochastic, a
    two-table LDCH/STCH) with odd sizes, so every ceil() in the cost model matters."""
    tab = np.array([1, 0, 2], dtype="<i4").tobytes()
    data = np.array([7], dtype="<u4").tobytes() + tab + bytes(2000)
    T = 4
    w = [encode("SEED", ddr=0),
         encode("LD", buf=0, baddr=0, ddr=64, esize=1, n0=1, n1=3, n2=5, n3=7,
                s0=0, s1=35, s2=7, s3=1),
         encode("LDCH", buf=1, baddr=0, ddr=64, esize=1, n0=3, n1=2, n2=3, n3=1,
                s0=9, s1=3, s2=1, s3=0, gather=3, tab0=T, tab1=T),
         encode("LDCH", buf=2, baddr=0, ddr=64, esize=4, n0=3, n1=1, n2=5, n3=1,
                s0=5, s1=0, s2=1, s3=0, gather=1, tab0=T),
         # EB, 2 groups: dY [1, 2*5, 3, 3] in IBUF, W [2*5, 3, 3, 3] in WBUF
         encode("MAC", pattern=1, abuf=0, aaddr=0, bbuf=1, baddr=0, caddr=100, n=1, ci=3,
                co=5, xh=3, xw=3, yh=3, yw=3, kh=3, kw=3, sh=1, sw=1, ph=1, pw=1, g=2),
         encode("MAC", pattern=2, abuf=0, aaddr=0, bbuf=1, baddr=0, caddr=100, n=1, ci=3,
                co=17, xh=3, xw=3, yh=3, yw=3, kh=1, kw=1, sh=1, sw=1, g=1),
         encode("MAC", pattern=0, acc=1, abuf=0, aaddr=0, bbuf=1, baddr=0, caddr=100, n=2,
                ci=33, co=18, xh=2, xw=2, yh=2, yw=2, kh=1, kw=1, sh=1, sw=1, g=1),
         encode("RQ", saddr=100, dbuf=0, daddr=0, n0=1, n1=3, n2=7, n3=5, shift=3, mode=1,
                tid=1, g0=105, g1=35, g2=5, g3=1, lo=-127, hi=127),
         encode("VADD", abuf=0, aaddr=0, bbuf=1, baddr=0, dbuf=0, daddr=200, count=65,
                nb=1, sa=1, sb=0, shift=1, mode=1, tid=2, lo=-127, hi=127),
         encode("VMASK", abuf=0, aaddr=0, bbuf=0, baddr=0, dbuf=0, daddr=300, count=33,
                lo=0, hi=128),
         encode("MAXP", sbuf=0, saddr=0, dbuf=0, daddr=400, planes=3, h=5, w=5, kh=3, kw=2,
                sh=2, sw=2, ph=1, pw=0),
         encode("MAXPB", xbuf=0, xaddr=0, gbuf=0, gaddr=400, dbuf=0, daddr=500, planes=3,
                h=5, w=5, kh=3, kw=2, sh=2, sw=2, ph=1, pw=0),
         encode("RSUM", sbuf=0, saddr=0, daddr=600, n=2, c=3, hw=11, acc=0),
         encode("SGD", maddr=700, gbuf=0, gaddr=0, dbuf=1, daddr=900, count=37, lrmul=3,
                lrshift=2, cshift=4, cbits=8),
         encode("STCH", buf=0, baddr=0, ddr=1000, esize=1, n0=3, n1=2, n2=3, n3=1,
                s0=9, s1=3, s2=1, s3=0, gather=3, tab0=T, tab1=T),
         encode("ST", buf=2, baddr=100, ddr=1200, esize=4, n0=1, n1=1, n2=3, n3=17,
                s0=0, s1=0, s2=17, s3=1),
         encode("END")]
    return Program(tg.fingerprint, b"".join(w), data, 4096, [], {"origin": []})


def test_cost_model_equals_emulator_on_other_instructions():
    tg = load_target(None)
    prog = _hand_program(tg)
    emu = _per_instruction_cycles(prog, tg)
    assert _static_cycles(prog, tg) == emu
    m = Machine(prog, tg)
    rep = program_report(prog, tg, m.run())
    assert rep["emulator"]["agrees"]
    # no origin: everything is attributed to one OTHER group
    assert [(g["pattern"], g["instructions"]) for g in rep["groups"]] == \
        [("OTHER", prog.n_instr)]


def test_every_instruction_in_exactly_one_group(lenet):
    c, _ = lenet
    rep = program_report(c.program, c.target)
    keys = instruction_groups(c.program)
    assert len(keys) == c.program.n_instr
    groups = {(g["layer"], g["loc"], g["pattern"]): g for g in rep["groups"]}
    assert len(groups) == len(rep["groups"])                  # group keys are unique
    assert Counter(keys) == {k: g["instructions"] for k, g in groups.items()}
    # phases partition the program
    for k in SUMS:
        assert sum(rep["totals"][ph][k] for ph in PHASES if ph != "overall") == \
            rep["totals"]["overall"][k]
        assert sum(g[k] for g in rep["groups"]) == rep["totals"]["overall"][k]
    pats = {(g["layer"], g["pattern"]) for g in rep["groups"]}
    assert {("conv1", "FP"), ("conv1", "WG"), ("conv2", "EB"), ("fc1", "UPDATE"),
            ("loss", "LOSS"), ("pool1", "BWD")} <= pats
    assert ("conv1", "EB") not in pats        # no error flows into the input image
    ops = {(g["layer"], g["pattern"]): g["ops"] for g in rep["groups"]}
    assert ops["fc1", "UPDATE"] == ["sgd"] and ops["conv2", "WG"] == ["conv_wg"]


def test_utilisation_and_bounds(lenet):
    c, _ = lenet
    rep = program_report(c.program, c.target)
    o = rep["totals"]["overall"]
    assert 0 < o["utilisation"] <= 1
    arr = c.target.mac_rows * c.target.mac_cols
    for g in rep["groups"]:
        assert 0 <= g["utilisation"] <= 1
        assert (g["utilisation"] > 0) == (g["macs"] > 0)
        assert g["bound"] == max(g["macs"] / arr, (g["ddr_bytes"] + g["index_bytes"])
                                 / c.target.ddr_bytes_per_cycle)
        assert g["cycles_mac"] >= g["macs"] / arr       # the array's peak
    # the whole program cannot beat the machine's roofline
    assert o["cycles"] >= max(o["macs"] / arr, (o["ddr_bytes"] + o["index_bytes"])
                              / c.target.ddr_bytes_per_cycle)
    assert o["bound"] == pytest.approx(sum(g["bound"] for g in rep["groups"]))
    assert o["cycles_over_bound"] == o["cycles"] / o["bound"]


def test_cli_report_prints_and_writes_json(lenet, tmp_path, capsys):
    c, cnt = lenet
    prog = tmp_path / "prog.bin"
    prog.write_bytes(c.blob)
    js = tmp_path / "rep.json"
    assert main(["report", str(prog), "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "TOTAL overall" in out and "conv2" in out and "TOTAL update" in out
    rep = json.loads(js.read_text())
    assert rep["totals"]["overall"]["cycles"] == cnt["cycles"]
    assert rep["program"]["instructions"] == c.program.n_instr
    assert {g["pattern"] for g in rep["groups"]} >= {"FP", "EB", "WG", "UPDATE"}


def test_cli_report_plot(lenet, tmp_path, capsys):
    c, _ = lenet
    prog = tmp_path / "prog.bin"
    prog.write_bytes(c.blob)
    png = tmp_path / "roof.png"
    rc = main(["report", str(prog), "--plot", str(png)])
    err = capsys.readouterr().err
    if importlib.util.find_spec("matplotlib") is None:
        assert rc == 1 and "pip install matplotlib" in err and "Traceback" not in err
        assert not png.exists()
    else:
        assert rc == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _one_line_error(capsys, argv, *needles):
    assert main(argv) == 1
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgec: error:"), cap.err
    for n in needles:
        assert n in lines[0], lines[0]


def test_cli_report_corrupted_file(lenet, tmp_path, capsys):
    c, _ = lenet
    bad = bytearray(c.blob)
    bad[100] ^= 0x40
    p = tmp_path / "bad.bin"
    p.write_bytes(bytes(bad))
    _one_line_error(capsys, ["report", str(p)], str(p), "corrupted")
    p.write_bytes(c.blob[:1000])
    _one_line_error(capsys, ["report", str(p)], str(p))
    _one_line_error(capsys, ["report", str(tmp_path / "missing.bin")], "missing.bin")


def test_cli_report_wrong_target_and_bad_words(lenet, tmp_path, capsys):
    c, _ = lenet
    p = tmp_path / "prog.bin"
    p.write_bytes(c.blob)
    t = tmp_path / "t.toml"
    t.write_text((ROOT / "isa" / "targets" / "default.toml").read_text()
                 .replace("rows = 16", "rows = 8"))
    _one_line_error(capsys, ["report", str(p), "--target", str(t)], "--target")
    # a structurally valid container whose code holds an unknown opcode
    words = bytearray(c.program.code)
    words[64] = 0xEE
    bad = dataclasses.replace(c.program, code=bytes(words))
    p.write_bytes(write_program(bad))
    _one_line_error(capsys, ["report", str(p)], "instruction 1", "opcode")
