"""Machine-state helpers shared by the instruction implementations.

Instruction functions take (machine, fields) and raise `Trap(what)` for every fault;
the machine turns it into an edgec.isa.errors.TrapError carrying the instruction index
and mnemonic.
"""
from __future__ import annotations

import numpy as np

from edgec.isa.table import BUFFERS

INT8_BUFS = ("IBUF", "WBUF")


class Trap(Exception):
    """A fault inside one instruction; `str(self)` says what and where."""


def buf_name(code: int, field: str) -> str:
    if not 0 <= code < len(BUFFERS):
        raise Trap(f"field {field}={code} names no buffer (0=IBUF, 1=WBUF, 2=ABUF)")
    return BUFFERS[code]


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


def vector_cycles(m, elements: int) -> int:
    lanes = m.target.vector_lanes
    return 4 + -(-int(elements) // lanes)
