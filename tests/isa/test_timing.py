"""Timing model (isa/timeline.py): queues overlap through dependency tokens and share
the DDR port; the token protocol is checked; the compiler's tokens cover every hazard."""
from pathlib import Path

import numpy as np
import pytest

from edgec.compiler.driver import compile_model
from edgec.compiler.pipeline import replay
from edgec.compiler.report import instr_cost
from edgec.isa.container import Program
from edgec.isa.encoding import decode_all, encode
from edgec.isa.machine import XBUF_WORDS
from edgec.isa.errors import TrapError
from edgec.isa.target import load_target
from edgec.runtime_emu.machine import Machine

ROOT = Path(__file__).resolve().parents[2]
TG = load_target(None)          # DDR latency 32, 16 bytes/cycle, 32 vector lanes
PUSH_NEXT, POP_PREV, POP_NEXT, PUSH_PREV = 8, 1, 2, 4


def _prog(words):
    return Program(TG.fingerprint, b"".join(words), bytes(4096), 4096, [], {"origin": []})


def _ld(baddr, ddr, n, dep=0):
    return encode("LD", dep=dep, buf=0, baddr=baddr, ddr=ddr, esize=1, n0=1, n1=1, n2=1,
                  n3=n, s3=1)


def _vadd(a, d, n, dep=0):
    return encode("VADD", dep=dep, abuf=0, aaddr=a, dbuf=0, daddr=d, count=n, nb=0,
                  lo=-127, hi=127)


def test_queues_overlap_and_share_the_ddr_port():
    assert (TG.ddr_latency, TG.ddr_bytes_per_cycle, TG.vector_lanes) == (32, 16, 32)
    words = [_ld(0, 0, 320, PUSH_NEXT),             # 32 + 20 = 52: [0, 52), port [32, 52)
             _vadd(0, 1000, 320, POP_PREV | PUSH_NEXT),   # 4 + 10 = 14: [52, 66)
             _ld(320, 320, 320),                    # queue free at 52, port [84, 104)
             encode("ST", dep=POP_PREV, buf=0, baddr=1000, ddr=2000, esize=1, n0=1, n1=1,
                    n2=1, n3=320, s3=1),            # ready 66; port [98,118) is taken
             encode("END")]                         # -> port [104, 124): ends 124
    m = Machine(_prog(words), TG)
    c = m.run()
    assert c["cycles"] == 125                       # END: [124, 125)
    assert c["cycles_dma"] == 3 * 52 and c["cycles_vector"] == 14 + 1
    # the same program without tokens would still be in order per queue but without
    # the store waiting for VADD: serial sum is what a one-queue machine would take
    assert c["cycles"] < sum(c[k] for k in ("cycles_dma", "cycles_mac", "cycles_vector"))
    ins = decode_all(_prog(words).code)
    ends = replay([i.name for i, _ in ins],
                  [f["dep"] for _, f in ins],
                  [instr_cost(i.name, f, TG)["cycles"] for i, f in ins], TG.ddr_latency)
    assert ends == [52, 66, 104, 124, 125]


def test_pop_without_push_traps_naming_the_instruction():
    m = Machine(_prog([_ld(0, 0, 16), _vadd(0, 100, 16, POP_PREV), encode("END")]), TG)
    with pytest.raises(TrapError, match=r"instruction 1 \(VADD\).*pop on load->compute "
                                        r"with no matching push"):
        m.run()


def test_a_later_push_does_not_satisfy_an_earlier_pop():
    words = [_vadd(0, 100, 16, POP_PREV), _ld(0, 0, 16, PUSH_NEXT), encode("END")]
    with pytest.raises(TrapError, match="instruction 0"):
        Machine(_prog(words), TG).run()


def test_end_traps_on_unconsumed_tokens():
    m = Machine(_prog([_ld(0, 0, 16, PUSH_NEXT), encode("END")]), TG)
    with pytest.raises(TrapError, match=r"END.*1 on load->compute"):
        m.run()


def test_queue_without_that_neighbour_traps():
    m = Machine(_prog([_ld(0, 0, 16, POP_PREV), encode("END")]), TG)
    with pytest.raises(TrapError, match="load queue has no prev queue"):
        m.run()


@pytest.fixture(scope="module")
def lenet():
    return compile_model(str(ROOT / "examples" / "lenet" / "model.py"),
                         str(ROOT / "examples" / "lenet" / "user.mask"))


def _ddr_bytes(prog, f):
    """The DDR bytes a DMA touches, from its fields and the index tables in the data
    section (independent of the compiler's footprints)."""
    data = np.frombuffer(prog.data, dtype=np.uint8)
    j = [np.arange(f[f"n{d}"], dtype=np.int64) for d in range(4)]
    for d, bit in ((0, 1), (1, 2)):
        if f.get("gather", 0) & bit:
            t = f[f"tab{d}"]
            j[d] = data[t:t + 4 * f[f"n{d}"]].view("<i4").astype(np.int64)
    off = (j[0][:, None, None, None] * f["s0"] + j[1][None, :, None, None] * f["s1"]
           + j[2][None, None, :, None] * f["s2"] + j[3][None, None, None, :] * f["s3"])
    return (f["ddr"] + f["esize"] * off.reshape(-1, 1)
            + np.arange(f["esize"])).reshape(-1)


PERSONALIZE = ROOT / "examples" / "personalize"


@pytest.mark.parametrize("kind", ["lenet", "adapt-bn", "pseudo"])
def test_compiled_tokens_cover_every_hazard(lenet, kind):
    """Replay the compiled program's timing and sweep it in program order: an instruction
    that reads an element (buffer element, XBUF word or DDR byte; buffers from the
    machine model's footprints, isa/machine.py) must start after every earlier
    write of it on another queue has ended, and one that writes it after every earlier
    read and write on another queue.  DDR bytes come from the fields and the tables.
    Also for a BatchNorm adaptation program and a program with an on-device teacher."""
    c = lenet if kind == "lenet" else compile_model(
        str(PERSONALIZE / "model.py"), str(PERSONALIZE / "user.mask"),
        **({"adapt_bn": True} if kind == "adapt-bn" else {"teacher": {"target": "pseudo"}}))
    prog, tg = c.program, c.target
    ins = decode_all(prog.code)
    costs = [instr_cost(i.name, f, tg)["cycles"] for i, f in ins]
    ends = replay([i.name for i, _ in ins],
                  [f["dep"] for _, f in ins], costs, tg.ddr_latency)
    size = {"IBUF": tg.ibuf, "WBUF": tg.wbuf, "ABUF": tg.abuf, "XBUF": XBUF_WORDS,
            "DDR": prog.ddr_size}
    last = {(sp, q, w): np.zeros(n, dtype=np.int64) for sp, n in size.items()
            for q in ("load", "compute", "store") for w in (False, True)}
    checked = 0
    for k, ((i, f), end, cost) in enumerate(zip(ins, ends, costs)):
        start, q = end - cost, i.queue
        acc = []
        for sp, lo, hi, w, _ in i.footprint(f):      # the machine model's accesses
            if sp != "DDR":                             # buffers: element ranges
                acc.append((sp, np.arange(lo, hi), w))
        if i.ddr_port:
            acc.append(("DDR", _ddr_bytes(prog, f), i.queue == "store"))
        for sp, idx, w in acc:
            for r in ("load", "compute", "store"):
                if r == q:
                    continue
                for kinds in ((True, False) if w else (True,)):
                    t = last[sp, r, kinds][idx].max()
                    checked += 1
                    assert t <= start, (k, i.name, sp, r, "write" if kinds else "read")
        for sp, idx, w in acc:
            a = last[sp, q, w]
            a[idx] = np.maximum(a[idx], end)
    assert checked > 1000
    # and the queues really overlap: many instructions start before earlier ones end
    latest, early = 0, 0
    for e, c in zip(ends, costs):
        early += e - c < latest
        latest = max(latest, e)
    assert early > 50


def test_dropping_a_token_is_caught(lenet):
    """Clear the push bit of one pushing instruction: the matching pop has no token."""
    code = bytearray(lenet.program.code)
    ins = decode_all(bytes(code))
    k = next(i for i, (_, f) in enumerate(ins) if f["dep"] & (PUSH_NEXT | PUSH_PREV))
    code[64 * k + 1] &= ~(PUSH_NEXT | PUSH_PREV) & 0xFF
    p = lenet.program
    m = Machine(Program(p.target_fp, bytes(code), p.data, p.ddr_size, p.symbols, p.meta),
                lenet.target)
    with pytest.raises(TrapError, match="no matching push|unconsumed"):
        m.run()
