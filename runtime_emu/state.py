"""Machine-state helpers shared by the instruction implementations.

Instruction functions take (machine, fields) and raise `Trap(what)` for every fault;
the machine turns it into an edgec.isa.errors.TrapError carrying the instruction index
and mnemonic.
"""
from __future__ import annotations

import numpy as np

from edgec.isa.table import BUFFERS, XBUF_WORDS

from .numerics import INT32_MAX

INT8_BUFS = ("IBUF", "WBUF")


class Trap(Exception):
    """A fault inside one instruction; `str(self)` says what and where."""


def buf_name(code: int, field: str, xbuf: bool = False) -> str:
    """The buffer a buf field names; XBUF (the scale unit's exponent table) only where the
    instruction allows it (`xbuf`: LD and ST), else a Trap naming the field."""
    if not 0 <= code < len(BUFFERS):
        raise Trap(f"field {field}={code} names no buffer (0=IBUF, 1=WBUF, 2=ABUF, 3=XBUF)")
    name = BUFFERS[code]
    if name == "XBUF" and not xbuf:
        raise Trap(f"field {field}={code} (XBUF): the exponent table XBUF is not a valid "
                   "operand here (only LD and ST move data to or from it)")
    return name


def x_check(addr: int, count: int, field: str) -> None:
    """Trap unless XBUF words [addr, addr + count) exist."""
    if count <= 0:
        raise Trap(f"field {field}: empty XBUF table ({count} words)")
    if addr + count > XBUF_WORDS:
        raise Trap(f"field {field}={addr}: XBUF words [{addr}, {addr + count}) exceed the "
                   f"XBUF size {XBUF_WORDS}")


def x_get(m, f: dict, field: str) -> int:
    """X[f[field]]: one exponent-table word, as a Python int."""
    a = f[field]
    x_check(a, 1, field)
    return int(m.bufs["XBUF"][a])


def x_stats(m, f: dict, saturated: int, maxabs: int) -> None:
    """Statistics (field st = 1): X[xs] += saturated (saturating at 2**31 - 1, never
    wrapping), X[xs+1] = max(X[xs+1], maxabs).  The caller checked the pair's address
    (`x_check(f["xs"], 2, "xs")`) before it wrote anything."""
    a = f["xs"]
    X = m.bufs["XBUF"]
    X[a] = min(int(X[a]) + int(saturated), INT32_MAX)
    X[a + 1] = max(int(X[a + 1]), int(maxabs))


def lut_addr(m, f: dict, mnemonic: str) -> int:
    """ABUF address of the (student's) exp table: lutaddr, or with dyn=1 the j-th of nlut
    consecutive 256-entry tables there, j = X[xz] - lutlo (Trap unless 0 <= j < nlut)."""
    if not f["dyn"]:
        return f["lutaddr"]
    e = x_get(m, f, "xz")
    j = e - f["lutlo"]
    if not 0 <= j < f["nlut"]:
        raise Trap(f"{mnemonic} dyn: exp table j = X[xz] - lutlo = {e} - {f['lutlo']} = {j} "
                   f"outside [0, nlut={f['nlut']})")
    return f["lutaddr"] + 256 * j


def nonzero(f: dict, *names: str) -> None:
    for nm in names:
        if f[nm] == 0:
            raise Trap(f"field {nm}=0: extents, kernel sizes and strides must be >= 1")


def check_range(m, buf: str, addr: int, count: int, what: str) -> None:
    size = m.bufs[buf].size
    if count <= 0:
        raise Trap(f"{what}: empty tile ({count} elements)")
    if addr + count > size:
        raise Trap(f"{what}: {buf} elements [{addr}, {addr + count}) exceed the buffer "
                   f"size {size}")


def read_buf(m, buf: str, addr: int, count: int, what: str) -> np.ndarray:
    """A read-only view of `count` elements of `buf` from element `addr` (native dtype)."""
    check_range(m, buf, addr, count, what)
    v = m.bufs[buf][addr:addr + count]
    v = v.view()
    v.flags.writeable = False
    return v


def write_buf(m, buf: str, addr: int, values: np.ndarray, what: str,
              fits: bool = False) -> None:
    """Store integer `values` (any int dtype) flat at `addr`; values must fit the buffer
    (checked, unless the caller knows they do: `fits`)."""
    values = np.asarray(values).reshape(-1)
    check_range(m, buf, addr, values.size, what)
    lo, hi = (-128, 127) if buf in INT8_BUFS else (-(2**31), 2**31 - 1)
    if not fits and values.size and (values.min() < lo or values.max() > hi):
        bad = int(np.flatnonzero((values < lo) | (values > hi))[0])
        raise Trap(f"{what}: value {int(values[bad])} (element {bad}) does not fit the "
                   f"{'int8' if buf in INT8_BUFS else 'int32'} buffer {buf}")
    m.bufs[buf][addr:addr + values.size] = values

