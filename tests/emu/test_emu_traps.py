"""Every fault is a TrapError naming the instruction index, the mnemonic and the cause."""
import numpy as np
import pytest

from edgec.isa.container import Program
from edgec.isa.encoding import encode
from edgec.isa.errors import EdgecError, TrapError
from edgec.isa.table import WORD_BYTES
from edgec.isa.target import Target
from edgec.runtime_emu.machine import Machine

from test_emu_util import ABUF, DDR, IBUF, TARGET, WBUF, build, ld, run


def _trap(instrs, ddr=None, **kw):
    with pytest.raises(TrapError) as ei:
        run(instrs, ddr, **kw)
    return ei.value


def test_ddr_out_of_range():
    d = DDR(size=4096)
    a = d.put(np.zeros(8, np.int8))
    t = _trap([("LD", ld(IBUF, 0, a, (1, 1, 1, 8), (0, 0, 0, 1))),
               ("LD", ld(IBUF, 0, 4090, (1, 1, 2, 4), (0, 0, 4, 1)))], d)
    assert (t.index, t.mnemonic) == (1, "LD")
    assert "outside DDR" in str(t) and "(0, 0, 1, 2)" in str(t) and "4096" in str(t)
    t = _trap([("ST", ld(ABUF, 0, 4096 - 8, (1, 1, 1, 3), (0, 0, 0, 1), esize=4))], d)
    assert (t.index, t.mnemonic) == (0, "ST")
    t = _trap([("SEED", dict(ddr=4094))], d)
    assert t.mnemonic == "SEED" and "outside DDR" in str(t)


def test_buffer_overflow():
    t = _trap([("LD", ld(IBUF, TARGET.ibuf - 2, 0, (1, 1, 1, 4), (0, 0, 0, 1)))])
    assert t.index == 0 and "IBUF" in str(t) and str(TARGET.ibuf) in str(t)
    t = _trap([("RQ", dict(saddr=TARGET.abuf - 1, dbuf=IBUF, daddr=0, n0=1, n1=1, n2=1, n3=2,
                           shift=1))])
    assert t.mnemonic == "RQ" and "ABUF" in str(t) and "saddr" in str(t)


def test_accumulator_overflow_traps_at_the_right_instruction():
    d = DDR()
    x = d.put(np.full(64, 127, np.int8))
    c = d.put(np.array([2**31 - 1 - 64 * 127 * 127 + 1], np.int32), "i32")
    ok = d.put(np.array([2**31 - 1 - 64 * 127 * 127], np.int32), "i32")
    mac = ("MAC", dict(pattern=0, acc=1, abuf=IBUF, aaddr=0, bbuf=WBUF, baddr=0, caddr=0,
                       n=1, ci=64, co=1, xh=1, xw=1, yh=1, yw=1, kh=1, kw=1, sh=1, sw=1, g=1))
    load = [("LD", ld(IBUF, 0, x, (1, 1, 1, 64), (0, 0, 0, 1))),
            ("LD", ld(WBUF, 0, x, (1, 1, 1, 64), (0, 0, 0, 1)))]
    m = run(load + [("LD", ld(ABUF, 0, ok, (1, 1, 1, 1), (0, 0, 0, 1), esize=4)), mac], d)
    assert m.abuf[0] == 2**31 - 1                     # exactly the largest value: fine
    t = _trap(load + [("LD", ld(ABUF, 0, c, (1, 1, 1, 1), (0, 0, 0, 1), esize=4)), mac], d)
    assert (t.index, t.mnemonic) == (3, "MAC") and "overflow" in str(t)
    # negative side, products only (no acc): needs bigger buffers than the default target
    big_t = Target(**{**TARGET.__dict__, "ibuf": 1 << 20, "wbuf": 1 << 20})
    n = 1 << 18                                   # 2**18 * 127 * 127 > 2**31
    d2 = DDR(size=1 << 19)
    p = d2.put(np.full(n, 127, np.int8))
    q = d2.put(np.full(n, -127, np.int8))
    wg = ("MAC", dict(pattern=2, acc=0, abuf=IBUF, aaddr=0, bbuf=WBUF, baddr=0, caddr=0,
                      n=1, ci=1, co=1, xh=512, xw=512, yh=512, yw=512, kh=1, kw=1, sh=1, sw=1,
                      g=1))
    big = [("LD", ld(IBUF, 0, p, (1, 1, 512, 512), (0, 0, 512, 1))),
           ("LD", ld(WBUF, 0, q, (1, 1, 512, 512), (0, 0, 512, 1)))]
    t = _trap(big + [wg], d2, target=big_t)
    assert (t.index, t.mnemonic) == (2, "MAC") and str(-n * 127 * 127) in str(t)


def test_rsum_overflow():
    d = DDR()
    x = d.put(np.full(64, 127, np.int8))
    c = d.put(np.array([2**31 - 100], np.int32), "i32")
    t = _trap([("LD", ld(IBUF, 0, x, (1, 1, 1, 64), (0, 0, 0, 1))),
               ("LD", ld(ABUF, 0, c, (1, 1, 1, 1), (0, 0, 0, 1), esize=4)),
               ("RSUM", dict(sbuf=IBUF, saddr=0, daddr=0, n=1, c=1, hw=64, acc=1))], d)
    assert (t.index, t.mnemonic) == (2, "RSUM")


def _raw_program(words):
    return Program(TARGET.fingerprint, b"".join(words), b"", 1024)


def test_malformed_words():
    stray = bytearray(encode("END"))
    stray[-1] = 0x80
    with pytest.raises(TrapError) as ei:
        Machine(_raw_program([encode("SEED", ddr=0), bytes(stray)]), TARGET)
    assert ei.value.index == 1 and ei.value.mnemonic == "END" and "stray" in str(ei.value)
    unk = bytes([200]) + bytes(WORD_BYTES - 1)
    with pytest.raises(TrapError) as ei:
        Machine(_raw_program([encode("END"), encode("END"), unk]), TARGET)
    assert ei.value.index == 2 and "unknown opcode 200" in str(ei.value)


def test_missing_end_and_end_stops():
    t = _trap([("SEED", dict(ddr=0))], end=False)
    assert t.index == 1 and "without END" in str(t)
    t = _trap([], end=False)
    assert t.index == 0
    # instructions after END never run
    m = run([("END", {}), ("LD", ld(IBUF, 0, 10**9, (1, 1, 1, 1), (0, 0, 0, 1)))])
    assert m.counters["instructions"] == 1 and m.counters["LD"] == 0


def test_target_mismatch():
    other = Target(**{**TARGET.__dict__, "mac_rows": 32})
    with pytest.raises(EdgecError) as ei:
        Machine(build([]), other)
    assert not isinstance(ei.value, TrapError) and "fingerprint" in str(ei.value)


@pytest.mark.parametrize("instr,needle", [
    (("LD", ld(IBUF, 0, 0, (1, 1, 1, 4), (0, 0, 0, 1), esize=4)), "esize=4"),
    (("LD", ld(ABUF, 0, 0, (1, 1, 1, 4), (0, 0, 0, 1), esize=1)), "esize=1"),
    (("LD", ld(3, 0, 0, (1, 1, 1, 4), (0, 0, 0, 1))), "buf=3"),
    (("LD", ld(IBUF, 0, 0, (1, 0, 1, 4), (0, 0, 0, 1))), "n1=0"),
    (("LDCH", ld(IBUF, 0, 0, (1, 1, 1, 4), (0, 0, 0, 1), gather=0)), "gather=0"),
    (("STCH", ld(IBUF, 0, 0, (1, 1, 1, 4), (0, 0, 0, 1), gather=0)), "gather=0"),
    (("RQ", dict(saddr=0, dbuf=IBUF, daddr=0, n0=1, n1=1, n2=1, n3=1, shift=40)), "shift=40"),
    (("RQ", dict(saddr=0, dbuf=IBUF, daddr=0, n0=0, n1=1, n2=1, n3=1, shift=1)), "n0=0"),
    (("MAC", dict(pattern=3, n=1, ci=1, co=1, xh=1, xw=1, yh=1, yw=1, kh=1, kw=1, sh=1,
                  sw=1)), "pattern=3"),
    (("MAC", dict(pattern=0, abuf=ABUF, n=1, ci=1, co=1, xh=1, xw=1, yh=1, yw=1, kh=1, kw=1,
                  sh=1, sw=1, g=1)), "int8"),
    (("MAC", dict(pattern=0, n=1, ci=1, co=1, xh=1, xw=1, yh=1, yw=1, kh=1, kw=1, sh=0,
                  sw=1, g=1)), "sh=0"),
    (("MAC", dict(pattern=0, n=1, ci=1, co=1, xh=1, xw=1, yh=1, yw=1, kh=1, kw=1, sh=1,
                  sw=1, g=0)), "g=0"),
    (("SGD", dict(maddr=0, gbuf=IBUF, dbuf=IBUF, count=1, cshift=16, cbits=0)), "cbits=0"),
    (("MAXP", dict(sbuf=IBUF, dbuf=IBUF, planes=1, h=2, w=2, kh=3, kw=3, sh=1, sw=1)),
     "larger than"),
])
def test_malformed_fields(instr, needle):
    t = _trap([("SEED", dict(ddr=0)), instr])
    assert t.index == 1 and t.mnemonic == instr[0] and needle in str(t), str(t)


def test_bad_gather_table_and_label():
    d = DDR()
    tab = d.put(np.array([0, -1], np.int32), "i32")
    t = _trap([("LDCH", ld(IBUF, 0, 0, (2, 1, 1, 1), (1, 0, 0, 0), gather=1, tab0=tab))], d)
    assert "entry 1 is -1" in str(t)
    d = DDR()
    lab = d.put(np.array([1, 3], np.int32), "i32")
    t = _trap([("LD", ld(ABUF, 0, lab, (1, 1, 1, 2), (0, 0, 0, 1), esize=4)),
               ("LD", ld(ABUF, 8, lab, (1, 1, 1, 256), (0, 0, 0, 0), esize=4)),
               ("LOSSG", dict(zbuf=IBUF, zaddr=0, laddr=0, lutaddr=8, dbuf=IBUF, daddr=0, n=2,
                              k=3, rmul=1, shift=1))], d)
    assert (t.index, t.mnemonic) == (2, "LOSSG") and "label[1] = 3" in str(t)


def test_write_of_int32_into_int8_buffer_traps():
    d = DDR()
    a = d.put(np.array([1000], np.int32), "i32")
    t = _trap([("LD", ld(ABUF, 0, a, (1, 1, 1, 1), (0, 0, 0, 1), esize=4)),
               ("VMASK", dict(abuf=ABUF, aaddr=0, bbuf=ABUF, baddr=0, dbuf=IBUF, daddr=0,
                              count=1, lo=-1000, hi=1001))], d)
    assert t.mnemonic == "VMASK" and "1000" in str(t)
