"""Translation blocks (runtime_emu/translate.py) against the interpreter, the executable
definition: the same DDR, buffers, outputs, counters, access log maps, and traps at the
same index with the same message, on compiled programs, random models, mutated programs
and hand-made blocks that probe each proof obligation."""
import random
import sys
from pathlib import Path

import numpy as np
import pytest

from edgec.isa.container import Program, read_program, write_program
from edgec.isa.errors import TrapError
from edgec.isa.table import WORD_BYTES
from edgec.runtime_emu import translate as T
from edgec.runtime_emu.host import Session
from edgec.runtime_emu.machine import Machine

from test_emu_util import ABUF, DDR, IBUF, TARGET, WBUF, build, ddr_read, ld

ROOT = Path(__file__).resolve().parents[2]
TINY_TOML = ROOT / "tests" / "data" / "tiny.toml"


def _state(m):
    return (m.ddr.copy(), {k: v.copy() for k, v in m.bufs.items()}, dict(m.counters),
            m.read_map.copy(), m.last_writer.copy(), m.pc, m.halted)


def _same(a, b):
    assert np.array_equal(a[0], b[0]), "DDR differs"
    for k in a[1]:
        assert np.array_equal(a[1][k], b[1][k]), f"{k} differs"
    assert a[2] == b[2], "counters differ"
    assert np.array_equal(a[3], b[3]), "read map differs"
    assert np.array_equal(a[4], b[4]), "last writer differs"
    assert a[5:] == b[5:], "pc / halted differ"


def run_machine(prog, target, translate):
    """(trap as (index, mnemonic, message) or None, state) of one Machine.run."""
    m = None
    try:
        m = Machine(prog, target, translate)
        m.run()
        trap = None
    except TrapError as e:
        trap = (e.index, e.mnemonic, str(e))
    return trap, None if m is None else _state(m)


def compare_machine(prog, target=TARGET):
    t1, s1 = run_machine(prog, target, True)
    t0, s0 = run_machine(prog, target, False)
    assert t1 == t0
    assert (s1 is None) == (s0 is None)
    if s0 is not None:
        _same(s1, s0)
    return t0


def compare_steps(prog, target, x, y, steps=2, seed=None):
    """Session steps translated vs interpreted: out dicts and machine state equal after
    every step; returns the translation."""
    a, b = Session(prog, target, True), Session(prog, target, False)
    for i in range(steps):
        oa = a.step(x, y, None if seed is None else seed + i)
        ob = b.step(x, y, None if seed is None else seed + i)
        assert oa.keys() == ob.keys()
        for k in oa:
            assert np.array_equal(oa[k], ob[k]), f"step {i}: {k} differs"
        _same(_state(a.machine), _state(b.machine))
    assert a.totals == b.totals
    return T.cached(a.machine)


@pytest.fixture
def small_blocks(monkeypatch):
    """Lift blocks of any length (hand-made programs are short)."""
    monkeypatch.setattr(T, "MIN_BLOCK", 1)
    T._CACHE.clear()
    yield
    T._CACHE.clear()


# ---------------------------------------------------------------- compiled programs

@pytest.fixture(scope="module")
def lenet():
    from edgec.compiler.driver import compile_model
    c = compile_model(str(ROOT / "examples" / "lenet" / "model.py"),
                      str(ROOT / "examples" / "lenet" / "user.mask"))
    x = np.asarray(c.example_input, dtype=np.float32)
    y = np.arange(x.shape[0]) % int(c.program.meta["classes"])
    return c, x, y


def test_lenet_steps_equal(lenet):
    """The masked program: channel gathers (LDCH/STCH) through its index tables."""
    c, x, y = lenet
    tr = compare_steps(c.program, c.target, x, y, steps=3, seed=5)
    assert tr.lifted / tr.limit > 0.8


def test_lenet_unmasked_lifted():
    from edgec.compiler.driver import compile_model
    c = compile_model(str(ROOT / "examples" / "lenet" / "model.py"))
    x = np.asarray(c.example_input, dtype=np.float32)
    y = np.arange(x.shape[0]) % int(c.program.meta["classes"])
    tr = compare_steps(c.program, c.target, x, y, steps=2, seed=3)
    assert tr.lifted / tr.limit > 0.8          # the blocks really ran (coverage)
    assert sum(1 for _, _, b in tr.plan if b is not None) >= 5


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_block_models(seed):
    """Random CNNs (tests/randblocks.py: BN, residuals, depthwise/grouped convs, pools,
    masks) on the tiny target (small buffers: many tiles per layer)."""
    import torch

    from edgec.compiler.driver import compile_module
    from edgec.isa.target import load_target
    from randblocks import random_block_case
    tiny = load_target(TINY_TOML)
    model, example, mask = random_block_case(seed)[:3]
    torch.manual_seed(seed)
    c = compile_module(model, example, f"randblock{seed}", mask, tiny)
    x = np.asarray(example, dtype=np.float32)
    y = np.arange(x.shape[0]) % int(c.program.meta["classes"])
    tr = compare_steps(c.program, c.target, x, y, steps=2, seed=seed)
    assert tr.lifted > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet", "bnresnet", "personalize", "resnet18"])
def test_examples(name):
    from edgec.compiler.driver import compile_model
    d = ROOT / "examples" / name
    mask = d / "user.mask"
    c = compile_model(str(d / "model.py"), str(mask) if mask.exists() else None)
    x = np.asarray(c.example_input, dtype=np.float32)
    y = np.arange(x.shape[0]) % int(c.program.meta["classes"])
    tr = compare_steps(c.program, c.target, x, y, steps=2, seed=1)
    assert tr.lifted / tr.limit > 0.5


# ---------------------------------------------------------------- mutated programs

def _mutated(prog: Program, rng: random.Random) -> Program:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from fuzz import mutate_word
    code = [prog.code[i:i + WORD_BYTES] for i in range(0, len(prog.code), WORD_BYTES)]
    for _ in range(rng.choice([1, 2, 3])):
        i = rng.randrange(len(code))
        code[i], _ = mutate_word(rng, code[i], TARGET)
    p = Program(prog.target_fp, b"".join(code), prog.data, prog.ddr_size, prog.symbols,
                prog.meta)
    return read_program(write_program(p))


def test_mutated_programs_trap_alike(lenet):
    """Field-level word mutations (benchmarks/fuzz.py): faults at the same index with the
    same message, or the same end state."""
    c = lenet[0]
    rng = random.Random(7)
    traps = 0
    for _ in range(40):
        try:
            p = _mutated(c.program, rng)
        except Exception:       # noqa: BLE001 - a mutation the container refuses
            continue
        traps += compare_machine(p, c.target) is not None
    assert traps >= 1


# ---------------------------------------------------------------- hand-made blocks

def _conv_block(d, acc_init, shift=4, extra=()):
    """LD X, LD W, LD C0, MAC FP (acc=1), RQ, ST: one lifted block."""
    x = d.put(np.full(64, 127, np.int8))
    c = d.put(np.array([acc_init], np.int32), "i32")
    out = d.reserve(8)
    mac = ("MAC", dict(pattern=0, acc=1, abuf=IBUF, aaddr=0, bbuf=WBUF, baddr=0, caddr=0,
                       n=1, ci=64, co=1, xh=1, xw=1, yh=1, yw=1, kh=1, kw=1, sh=1, sw=1,
                       g=1))
    return [("LD", ld(IBUF, 0, x, (1, 1, 1, 64), (0, 0, 0, 1))),
            ("LD", ld(WBUF, 0, x, (1, 1, 1, 64), (0, 0, 0, 1))),
            ("LD", ld(ABUF, 0, c, (1, 1, 1, 1), (0, 0, 0, 1), esize=4)), mac,
            ("RQ", dict(saddr=0, dbuf=IBUF, daddr=100, n0=1, n1=1, n2=1, n3=1,
                        shift=shift, lo=-127, hi=127)),
            ("ST", ld(IBUF, 100, out, (1, 1, 1, 1), (0, 0, 0, 1))), *extra], out


def test_overflow_bound_falls_back_to_the_interpreter(small_blocks):
    """C0 near 2**31: the bound cannot exclude overflow, the block is interpreted: the
    exact largest value passes, one more traps at the MAC's index."""
    d = DDR()
    prog, out = _conv_block(d, 2**31 - 1 - 64 * 127 * 127)
    m = Machine(build(prog, d), TARGET)
    m.run()
    assert m.abuf[0] == 2**31 - 1
    compare_machine(build(prog, d))
    d = DDR()
    prog, _ = _conv_block(d, 2**31 - 64 * 127 * 127)
    assert compare_machine(build(prog, d))[:2] == (3, "MAC")


def test_block_is_lifted_and_exact(small_blocks):
    d = DDR()
    prog, out = _conv_block(d, 1000, shift=8)
    p = build(prog, d)
    tr = T.translate(Machine(p, TARGET))
    assert tr.plan[0][2] is not None and tr.plan[0][:2] == (0, 6)
    compare_machine(p)
    m = Machine(p, TARGET)
    m.run()
    assert ddr_read(m, out, (1,))[0] == 127          # (1000 + 64*127*127) >> 8, saturated


def test_dynamic_shift_out_of_range_traps_inside_a_block(small_blocks):
    """RQ dyn: the shift comes from XBUF at run time; out of range, the block is
    interpreted and the trap names the RQ (index 5) with the interpreter's message."""
    d = DDR()
    xt = d.put(np.array([40, 1, 1], np.int32), "i32")       # X[0] - X[1] - X[2] = 38
    prog, _ = _conv_block(d, 0)
    prog[4][1].update(dyn=1, xo=0, xa=1, xb=2)
    prog = [("LD", ld(3, 0, xt, (1, 1, 1, 3), (0, 0, 0, 1), esize=4))] + prog
    t = compare_machine(build(prog, d))
    assert t[:2] == (5, "RQ") and "38" in t[2]


def test_load_after_store_of_the_same_bytes(small_blocks):
    """An LD reading what an ST of the block wrote must see the stored bytes (the block
    ends before it): ST then LD of the same DDR bytes, then ST elsewhere."""
    d = DDR()
    prog, out = _conv_block(d, 5, shift=1)
    out2 = d.reserve(8)
    prog += [("LD", ld(WBUF, 200, out, (1, 1, 1, 1), (0, 0, 0, 1))),
             ("ST", ld(WBUF, 200, out2, (1, 1, 1, 1), (0, 0, 0, 1)))]
    p = build(prog, d)
    compare_machine(p)
    m = Machine(p, TARGET)
    m.run()
    assert ddr_read(m, out2, (1,))[0] == ddr_read(m, out, (1,))[0] == 127


def test_partly_overwritten_range_is_not_read_as_a_value(small_blocks):
    """A read of a range that a later write partly covered ends the block: LD 8 bytes,
    LD 4 of them anew, ST all 8 (half old, half new)."""
    d = DDR()
    a = d.put(np.arange(1, 9, dtype=np.int8))
    b = d.put(np.arange(-8, 0, dtype=np.int8))
    out = d.reserve(8)
    prog, _ = _conv_block(d, 3)
    prog += [("LD", ld(IBUF, 300, a, (1, 1, 1, 8), (0, 0, 0, 1))),
             ("LD", ld(IBUF, 304, b, (1, 1, 1, 4), (0, 0, 0, 1))),
             ("ST", ld(IBUF, 300, out, (1, 1, 1, 8), (0, 0, 0, 1)))]
    p = build(prog, d)
    compare_machine(p)
    m = Machine(p, TARGET)
    m.run()
    assert list(ddr_read(m, out, (8,))) == [1, 2, 3, 4, -8, -7, -6, -5]


def test_token_error_inside_the_code_hands_over_to_the_interpreter(small_blocks):
    """A pop without a push: the timing model refuses the word; the translated run
    stops lifting there and traps at the same index, with the same counters."""
    d = DDR()
    prog, _ = _conv_block(d, 0)
    prog[3][1]["dep"] = 2                                  # MAC pop_next: none pushed
    t = compare_machine(build(prog, d))
    assert t[:2] == (3, "MAC") and "pop" in t[2]


def test_cli_run_interpret_flag(tmp_path, lenet):
    from edgec.compiler.workflows.cli import main
    from edgec.isa.container import write_program
    c, x, y = lenet
    prog = tmp_path / "prog.bin"
    prog.write_bytes(write_program(c.program))
    np.savez(tmp_path / "batch.npz", x=x, y=y)
    outs = []
    for flag in ([], ["--interpret"]):
        o = tmp_path / f"out{len(outs)}.npz"
        assert main(["run", str(prog), "--input", str(tmp_path / "batch.npz"),
                     "-o", str(o), *flag]) == 0
        with np.load(o) as z:
            outs.append({k: z[k] for k in z.files})
    assert outs[0].keys() == outs[1].keys()
    for k in outs[0]:
        assert np.array_equal(outs[0][k], outs[1][k]), k


def _gather_prog(d, table):
    """A lifted MAC block, then LDCH of the rows `table` of a [4, 4] int8 matrix and
    STCH of them by the same table into another matrix."""
    src = d.put(np.arange(16, dtype=np.int8).reshape(4, 4))
    tab = d.put(np.array(table, np.int32), "i32")
    dst = d.reserve(16)
    n = len(table)
    prog, _ = _conv_block(d, 7)
    prog += [("LDCH", ld(IBUF, 400, src, (n, 1, 1, 4), (4, 0, 0, 1), gather=1, tab0=tab)),
             ("STCH", ld(IBUF, 400, dst, (n, 1, 1, 4), (4, 0, 0, 1), gather=1, tab0=tab))]
    return prog, src, dst


def test_gathered_rows_lifted_and_exact(small_blocks):
    d = DDR()
    prog, src, dst = _gather_prog(d, [3, 1, 2])
    p = build(prog, d)
    tr = T.translate(Machine(p, TARGET))
    assert tr.plan[0][2] is not None and tr.plan[0][1] == len(prog)
    compare_machine(p)
    m = Machine(p, TARGET)
    m.run()
    got = ddr_read(m, dst, (4, 4))
    assert (got[[3, 1, 2]] == np.arange(16).reshape(4, 4)[[3, 1, 2]]).all()
    assert (got[0] == 0).all()


def test_gathered_store_repeated_rows_last_wins(small_blocks):
    """A table naming one row twice: both writes land on the same bytes, the later
    element wins, and last_writer names the STCH, as in the interpreter."""
    d = DDR()
    prog, src, dst = _gather_prog(d, [2, 2, 0])
    prog.insert(7, ("LD", ld(IBUF, 400, src, (1, 1, 1, 12), (0, 0, 0, 1))))  # 12 values
    p = build(prog, d)
    assert T.translate(Machine(p, TARGET)).plan[0][1] == len(prog)
    compare_machine(p)
    m = Machine(p, TARGET)
    m.run()
    got = ddr_read(m, dst, (4, 4))
    assert list(got[2]) == [4, 5, 6, 7] and list(got[0]) == [8, 9, 10, 11]


def test_gathered_negative_entry_traps_inside_a_block(small_blocks):
    d = DDR()
    prog, src, dst = _gather_prog(d, [1, -1])
    t = compare_machine(build(prog, d))
    assert t[:2] == (6, "LDCH") and "negative" in t[2]


def test_default_translates_from_the_second_run(small_blocks):
    """translate=None: a one-shot run interprets (nothing translated), the process's
    next run of the same code translates; True and False force either."""
    d = DDR()
    prog, _ = _conv_block(d, 11)
    p = build(prog, d)
    T._SEEN.clear()
    Machine(p, TARGET).run()
    assert not T._CACHE
    Machine(p, TARGET).run()
    assert len(T._CACHE) == 1
    T._CACHE.clear()
    Machine(p, TARGET, False).run()
    assert not T._CACHE
