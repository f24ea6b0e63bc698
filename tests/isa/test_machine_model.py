"""The machine model in the ISA table (isa/machine.py): every instruction has a queue, a
unit, a footprint and a cost; a missing one is an error, not an empty footprint."""
import dataclasses
from collections import defaultdict

import pytest

from edgec.compiler.backend.tokens import footprint as token_footprint
from edgec.isa import machine as M
from edgec.isa import table
from edgec.isa.errors import EdgecError
from edgec.isa.table import BY_NAME, DMA, INSTRS
from edgec.isa.target import load_target

TG = load_target(None)


def _sample(ins) -> dict:
    """Valid-looking fields: 1 everywhere (extents, strides, pattern EB), 0 for
    buffer codes, dep, gather bits off but for channel-bank DMAs."""
    f = {fl.name: (0 if fl.kind == "buf" else 1) for fl in ins.all_fields}
    f["dep"] = 0
    if "gather" in f:
        f["gather"] = 3
    return f


@pytest.mark.parametrize("ins", INSTRS, ids=lambda i: i.name)
def test_every_instruction_has_queue_unit_footprint_and_cost(ins):
    assert ins.queue in M.QUEUES and ins.unit in M.UNITS
    f = _sample(ins)
    acc = ins.footprint(f)
    assert isinstance(acc, list)
    for a in acc:
        assert isinstance(a, M.Access) and a.space in M.SPACES and isinstance(a.write, bool)
        assert a.hi is None or a.lo <= a.hi
    cycles = ins.cycles(f, TG)
    assert isinstance(cycles, int) and cycles >= 1
    assert len(ins.work(f)) == 3
    # what the docs print (docs/isa.md): every formula says what it does
    assert ins.footprint.__doc__ and ins.cycles.__doc__


def test_only_token_carriers_touch_nothing():
    """An empty footprint is declared (SYNC, END), never a fall-through."""
    empty = {i.name for i in INSTRS if not i.footprint(_sample(i))}
    assert empty == {"SYNC", "END"}


def test_a_missing_footprint_fails_the_table_check(monkeypatch):
    broken = tuple(dataclasses.replace(i, footprint=None) if i.name == "VMASK" else i
                   for i in INSTRS)
    with pytest.raises(EdgecError, match="instruction VMASK has no valid footprint"):
        M.check_model(broken)
    # and a lookup of the broken row cannot silently give "no accesses"
    monkeypatch.setitem(BY_NAME, "VMASK", broken[[i.name for i in INSTRS].index("VMASK")])
    with pytest.raises(TypeError):
        token_footprint("VMASK", {"count": 4})


def test_missing_unit_or_cost_fails_the_table_check():
    for change in ({"unit": "tensor"}, {"cycles": None}, {"queue": "misc"}):
        broken = (dataclasses.replace(INSTRS[0], **change),) + INSTRS[1:]
        with pytest.raises(EdgecError, match=f"has no valid {next(iter(change))}"):
            M.check_model(broken)


def test_wiring_and_dma_set_come_from_the_model():
    assert M.CHANNELS == (("load", "compute"), ("compute", "load"), ("compute", "store"),
                          ("store", "compute"))
    assert M.POPS["compute"] == ((M.POP_PREV, "load"), (M.POP_NEXT, "store"))
    assert M.PUSHES["load"] == ((M.PUSH_NEXT, "compute"),)
    assert DMA == ("LD", "LDCH", "ST", "STCH")
    assert [i.name for i in INSTRS if i.barrier] == ["END"]
    assert table.BUFFERS == M.BUFFERS and M.BUFFER_ID["ABUF"] == 2


def test_token_footprint_maps_the_machine_footprint():
    """The planner's view: buffers as they are, DDR per tensor, index tables dropped, a
    compute instruction's XBUF words widened to all of XBUF."""
    class Sym:
        addr, nbytes = 1000, 64
    f = dict(buf=1, baddr=8, ddr=1004, esize=1, n0=2, n1=3, n2=1, n3=1, s0=3, s1=1,
             gather=1, tab0=40)
    assert [a.operand for a in BY_NAME["LDCH"].footprint(defaultdict(int, f))] == \
        ["buf", "box", "tab0"]
    assert token_footprint("LDCH", f, Sym()) == [
        ("WBUF", 8, 14, True, None), (("DDR", 1000), 1000, 1064, False, None)]
    rq = dict(saddr=0, dbuf=0, daddr=5, n0=1, n1=1, n2=1, n3=4, dyn=1, xo=7, xa=8, xb=9,
              st=1, xs=10)
    exact = BY_NAME["RQ"].footprint(defaultdict(int, rq))
    assert [(a.space, a.lo, a.hi) for a in exact if a.space == "XBUF"] == \
        [("XBUF", 7, 8), ("XBUF", 8, 9), ("XBUF", 9, 10), ("XBUF", 10, 12)]
    assert token_footprint("RQ", rq)[-1] == ("XBUF", 0, M.XBUF_WORDS, True, None)
    ld = dict(buf=3, baddr=4, ddr=0, esize=4, n0=1, n1=1, n2=1, n3=6, s3=1)
    assert token_footprint("LD", ld, Sym())[0] == ("XBUF", 4, 10, True, None)


def test_cost_formulas_name_bad_fields():
    f = _sample(BY_NAME["MAXP"])
    f["sh"] = 0
    with pytest.raises(M.FieldError, match="stride 0"):
        BY_NAME["MAXP"].cycles(f, TG)
    f = _sample(BY_NAME["MAC"])
    f["pattern"] = 3
    with pytest.raises(M.FieldError, match="pattern 3"):
        BY_NAME["MAC"].cycles(f, TG)
