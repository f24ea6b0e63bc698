"""LD / LDCH / ST / STCH / SEED: DDR <-> on-chip buffer transfers.

A plain LD or ST word that cannot fault moves its box through one strided numpy view of
DDR (and one entry in the machine's access log), its geometry cached per box shape
(`_box_plan`).  Gathered words (LDCH, STCH), faulting words (the general path finds and
reports the fault) and stores whose elements overlap in DDR (the last one in row-major
order wins) take the general path over explicit byte addresses.
"""
from __future__ import annotations

from functools import lru_cache
from operator import itemgetter
from typing import NamedTuple

import numpy as np

from edgec.isa.table import BUFFERS

from .state import Trap, buf_name, check_range, nonzero

_ESIZE = {"IBUF": 1, "WBUF": 1, "ABUF": 4, "XBUF": 4}
_DT = {1: np.dtype("<i1"), 4: np.dtype("<i4")}


def _ddr_check(m, lo: int, hi: int, what: str) -> None:
    if lo < 0 or hi > m.ddr.size:
        raise Trap(f"{what}: DDR bytes [{lo}, {hi}) outside DDR (size {m.ddr.size})")


def _read_table(m, addr: int, n: int, name: str) -> np.ndarray:
    _ddr_check(m, addr, addr + 4 * n, f"index table {name} ({n} int32 entries)")
    tab = m.ddr[addr:addr + 4 * n].view("<i4").astype(np.int64)
    m.log.read_box(addr, (4 * n,), (1,))
    m.counters["ddr_read_bytes"] += 4 * n
    if tab.size and tab.min() < 0:
        i = int(np.flatnonzero(tab < 0)[0])
        raise Trap(f"index table {name} at DDR {addr}: entry {i} is {int(tab[i])} (negative)")
    return tab


def _box(m, f: dict, mnemonic: str, gathered: bool):
    """Validate a DMA word; return (buf, esize, count, byte addresses [count], table bytes)."""
    buf = buf_name(f["buf"], "buf", xbuf=not gathered)    # XBUF: LD and ST only
    esize = f["esize"]
    if esize != _ESIZE[buf]:
        raise Trap(f"esize={esize} but buf={f['buf']} ({buf}) needs esize {_ESIZE[buf]}")
    if gathered:
        if f["gather"] == 0:
            raise Trap(f"{mnemonic} with gather=0 (use {mnemonic[:-2]} for a plain box)")
    elif f.get("gather") or f.get("tab0") or f.get("tab1"):   # LD/ST words have no such fields
        raise Trap(f"{mnemonic} must have gather=0, tab0=0, tab1=0 (got gather={f['gather']}, "
                   f"tab0={f['tab0']}, tab1={f['tab1']})")
    nonzero(f, "n0", "n1", "n2", "n3")
    n0, n1, n2, n3 = f["n0"], f["n1"], f["n2"], f["n3"]
    count = n0 * n1 * n2 * n3
    check_range(m, buf, f["baddr"], count, f"{mnemonic} tile [{n0},{n1},{n2},{n3}] at baddr")
    tab_bytes = 0
    j0 = np.arange(n0, dtype=np.int64)
    j1 = np.arange(n1, dtype=np.int64)
    if gathered and f["gather"] & 1:
        j0 = _read_table(m, f["tab0"], n0, "tab0")
        tab_bytes += 4 * n0
    if gathered and f["gather"] & 2:
        j1 = _read_table(m, f["tab1"], n1, "tab1")
        tab_bytes += 4 * n1
    addr = _element_addr(f, j0, j1)
    hi = int(addr.max()) + esize
    if hi > m.ddr.size:
        k = int(np.flatnonzero(addr + esize > m.ddr.size)[0])
        el = np.unravel_index(k, (n0, n1, n2, n3))
        raise Trap(f"{mnemonic}: element {tuple(int(e) for e in el)} at DDR bytes "
                   f"[{int(addr[k])}, {int(addr[k]) + esize}) lies outside DDR "
                   f"(size {m.ddr.size})")
    return buf, esize, count, addr, tab_bytes


def _element_addr(f: dict, j0: np.ndarray, j1: np.ndarray) -> np.ndarray:
    """DDR byte address of every box element (row-major), rows j0 and j1 (int64)."""
    n2, n3 = f["n2"], f["n3"]
    off = (j0[:, None, None, None] * f["s0"] + j1[None, :, None, None] * f["s1"]
           + np.arange(n2, dtype=np.int64)[None, None, :, None] * f["s2"]
           + np.arange(n3, dtype=np.int64)[None, None, None, :] * f["s3"])
    return (f["ddr"] + f["esize"] * off).reshape(-1)


def gather_addr(m, f: dict) -> np.ndarray | None:
    """The element addresses of a gathered (LDCH/STCH) word whose fields the caller
    checked, from its index tables in DDR now; None where `_box` would trap on them (a
    negative entry, an element outside DDR).  Reads without recording anything."""
    rows = []
    for d in (0, 1):
        n = f[f"n{d}"]
        if f["gather"] >> d & 1:
            t = f[f"tab{d}"]
            if t < 0 or t + 4 * n > m.ddr.size:
                return None
            tab = m.ddr[t:t + 4 * n].view("<i4").astype(np.int64)
            if tab.min() < 0:
                return None
            rows.append(tab)
        else:
            rows.append(np.arange(n, dtype=np.int64))
    addr = _element_addr(f, *rows)
    if int(addr.max()) + f["esize"] > m.ddr.size:
        return None
    return addr


def _load(m, f, mnemonic, gathered):
    buf, esize, count, addr, tab_bytes = _box(m, f, mnemonic, gathered)
    bytes_idx = addr[:, None] + np.arange(esize, dtype=np.int64)
    raw = np.ascontiguousarray(m.ddr[bytes_idx])
    vals = raw.view(_DT[esize]).reshape(-1)
    m.log.read_bytes(bytes_idx)
    m.bufs[buf][f["baddr"]:f["baddr"] + count] = vals
    m.counters["ddr_read_bytes"] += count * esize


def store_bytes(m, addr: np.ndarray, dt, vals) -> np.ndarray:
    """Write the elements `vals` (dtype dt) to DDR at the element addresses `addr`;
    returns the DDR bytes written, in the order the access log records them.  Several
    elements may map to the same DDR byte (stride 0, overlapping strides, repeated table
    entries): the LAST one in row-major box order wins, deterministically."""
    raw = np.ascontiguousarray(vals.astype(dt)).view(np.uint8).reshape(-1)
    dst = (addr[:, None] + np.arange(dt.itemsize, dtype=np.int64)).reshape(-1)
    if addr.size > 1 and np.diff(addr).min() < dt.itemsize:   # else no byte twice
        rev = dst[::-1]
        uniq, first_in_rev = np.unique(rev, return_index=True)
        if uniq.size != dst.size:
            keep = dst.size - 1 - first_in_rev
            dst, raw = dst[keep], raw[keep]
    m.ddr[dst] = raw
    return dst


def _store(m, f, mnemonic, gathered):
    buf, esize, count, addr, tab_bytes = _box(m, f, mnemonic, gathered)
    dst = store_bytes(m, addr, _DT[esize], m.bufs[buf][f["baddr"]:f["baddr"] + count])
    m.log.write_bytes(m.pc, dst)
    m.counters["ddr_write_bytes"] += count * esize


class BoxPlan(NamedTuple):
    """Static geometry of a plain (ungathered) box, shared by all words with its shape."""
    count: int                     # elements
    shape: tuple                   # (n0, n1, n2, n3)
    strides: tuple                 # DDR byte strides of the elements
    byte_shape: tuple              # shape + (esize,): every DDR byte of the box
    byte_strides: tuple
    extent: int                    # bytes from the box's first DDR byte past its last
    injective: bool                # no two elements share a DDR byte


_BOX_KEY = itemgetter("esize", "n0", "n1", "n2", "n3", "s0", "s1", "s2", "s3")


@lru_cache(maxsize=4096)
def _box_plan(key: tuple) -> BoxPlan | None:
    """None for an empty box (a fault the checking path reports)."""
    esize, ns, ss = key[0], key[1:5], key[5:9]
    if 0 in ns or esize == 0:
        return None
    strides = tuple(esize * s for s in ss)
    extent = esize + sum((n - 1) * st for n, st in zip(ns, strides))
    injective, span = True, esize          # dims by increasing stride: each stride must
    for st, n in sorted((st, n) for n, st in zip(ns, strides) if n > 1):
        injective = injective and st >= span       # clear all bytes of the smaller ones
        span += st * (n - 1)
    count = ns[0] * ns[1] * ns[2] * ns[3]
    return BoxPlan(count, ns, strides, ns + (esize,), strides + (1,), extent, injective)


def _fast_box(m, f):
    """(plan, buffer name) of a plain box word that cannot fault, else None."""
    b = f["buf"]
    if b >= len(BUFFERS):
        return None
    buf = BUFFERS[b]                  # XBUF too: the fast path serves LD and ST only
    p = _box_plan(_BOX_KEY(f))
    if (p is None or f["esize"] != _ESIZE[buf] or f["baddr"] + p.count > m.bufs[buf].size
            or f["ddr"] + p.extent > m.ddr.size):
        return None
    return p, buf


def op_ld(m, f):
    fast = _fast_box(m, f)
    if fast is None:
        return _load(m, f, "LD", False)          # the checking path: it traps
    p, buf = fast
    a, b, esize = f["ddr"], f["baddr"], f["esize"]
    m.bufs[buf][b:b + p.count].reshape(p.shape)[...] = np.ndarray(
        p.shape, _DT[esize], m.ddr, a, p.strides)
    m.log.read_box(a, p.byte_shape, p.byte_strides)
    m.counters["ddr_read_bytes"] += p.count * esize


def op_ldch(m, f):
    return _load(m, f, "LDCH", True)


def op_st(m, f):
    fast = _fast_box(m, f)
    if fast is None or not fast[0].injective:
        return _store(m, f, "ST", False)         # traps, or resolves overlapping bytes
    p, buf = fast
    a, b, esize = f["ddr"], f["baddr"], f["esize"]
    np.ndarray(p.shape, _DT[esize], m.ddr, a, p.strides)[...] = \
        m.bufs[buf][b:b + p.count].reshape(p.shape)
    m.log.write_box(m.pc, a, p.byte_shape, p.byte_strides)
    m.counters["ddr_write_bytes"] += p.count * esize


def op_stch(m, f):
    return _store(m, f, "STCH", True)


def op_seed(m, f):
    a = f["ddr"]
    _ddr_check(m, a, a + 4, "SEED uint32 at ddr")
    m.seed = int(m.ddr[a:a + 4].view("<u4")[0])
    m.log.read_box(a, (4,), (1,))
    m.counters["ddr_read_bytes"] += 4
