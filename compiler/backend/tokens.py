"""Dependency tokens, derived from what every instruction reads and writes.

The machine runs three queues (load, compute, store) concurrently; only tokens order
instructions of different queues (isa/table.py).  Codegen emits instructions in program
order with double-buffered addresses; for each one this planner

1. computes its footprint: element ranges of IBUF/WBUF/ABUF and a byte range of DDR that
   it reads or writes (`footprint`; a gathered DMA dimension may touch any row of its
   tensor, so those count the whole tensor);
2. finds the earlier instructions of OTHER queues it conflicts with (read after write,
   write after read, write after write on overlapping ranges);
3. drops the ones already ordered before it: every queue carries a vector clock
   `known[q][r]` = the last instruction of queue r known to have finished before q's next
   instruction starts (program order within a queue, plus everything the popped tokens'
   pushers knew);
4. for each remaining neighbour queue, pops one token pushed by the latest conflicting
   instruction (its push bit is set after the fact: tokens are created only when a pop
   needs them, so pushes and pops pair up in FIFO order and none is left over).  The
   load and store queues are not neighbours: a load waiting for a store (a tensor stored
   then read back, or a buffer range reused) goes through the compute queue, through the
   latest compute instruction if it comes after the store (it pops the store's token), or
   else through a SYNC instruction inserted here.

So the tokens are sufficient by construction and the emulator's hazard-free timing holds
for every program codegen writes; tests/test_timing.py checks it by replaying the program
with the emulator's timing and the footprints.
"""
from __future__ import annotations

from collections import defaultdict

from edgec.isa.table import BUFFERS, PATTERNS, XBUF_WORDS

POP_PREV, POP_NEXT, PUSH_PREV, PUSH_NEXT = 1, 2, 4, 8
QUEUE = {"load": 0, "compute": 1, "store": 2}
_NAMES = ("load", "compute", "store")
# (consumer, producer) -> pop bit of the consumer; (producer, consumer) -> push bit
POP_BIT = {(1, 0): POP_PREV, (1, 2): POP_NEXT, (0, 1): POP_NEXT, (2, 1): POP_PREV}
PUSH_BIT = {(0, 1): PUSH_NEXT, (1, 0): PUSH_PREV, (1, 2): PUSH_NEXT, (2, 1): PUSH_PREV}


def _n(*xs) -> int:
    p = 1
    for x in xs:
        p *= x
    return p


_DMA = {"LD": True, "LDCH": True, "ST": False, "STCH": False}     # name -> is a load


_XBUF_ALL = ("XBUF", 0, XBUF_WORDS, True, None)


def footprint(name: str, f: dict, sym=None, rows=None) -> list[tuple]:
    """The instruction's accesses (`_footprint`); an instruction that reads exponents or
    counts statistics (dyn, st, EXPUPD) counts as reading and writing all of XBUF: only
    the table's LD and ST on the other queues meet it."""
    acc = _footprint(name, f, sym, rows)
    if name == "EXPUPD" or f.get("dyn") or f.get("st") or f.get("dcl"):
        acc.append(_XBUF_ALL)
    return acc


def _footprint(name: str, f: dict, sym=None, rows=None) -> list[tuple]:
    """[(space, lo, hi, is_write, kind)] of one instruction; spaces IBUF/WBUF/ABUF
    (elements, kind None) and ("DDR", tensor address) (tensors never overlap, so only
    ranges of one tensor are compared).  A DDR range is in bytes (kind None) or, for a
    channel-bank DMA, `rows` = (("tab", table), lo, hi): entries [lo, hi) of that index
    table (the mask lists kept channels once each, so disjoint entries are disjoint
    rows); ranges of different kinds always conflict.  A gathered DMA without `rows`
    counts the whole tensor `sym`."""
    B = BUFFERS
    if name in _DMA:                    # the common case, without the defaultdict copy
        v = f.get
        n0, n1, n2, n3 = v("n0", 0), v("n1", 0), v("n2", 0), v("n3", 0)
        kind = None
        if rows is not None:
            kind, lo, hi = rows
        elif v("gather", 0) and sym is not None:
            lo, hi = sym.addr, sym.addr + sym.nbytes
        else:
            lo = v("ddr", 0)
            hi = lo + v("esize", 0) * ((n0 - 1) * v("s0", 0) + (n1 - 1) * v("s1", 0)
                                       + (n2 - 1) * v("s2", 0) + (n3 - 1) * v("s3", 0) + 1)
        load = _DMA[name]
        baddr = v("baddr", 0)
        return [(B[v("buf", 0)], baddr, baddr + n0 * n1 * n2 * n3, load, None),
                (("DDR", sym.addr if sym else None), lo, hi, not load, kind)]
    f = defaultdict(int, f)             # omitted fields encode as 0
    if name == "SEED":
        return [(("DDR", sym.addr if sym else None), f["ddr"], f["ddr"] + 4, False, None)]
    if name == "MAC":
        n, ci, co, g = f["n"], f["ci"], f["co"], f["g"]
        x = _n(n, g * ci, f["xh"], f["xw"])
        y = _n(n, g * co, f["yh"], f["yw"])
        w = _n(g * co, ci, f["kh"], f["kw"])
        a, b, c = {"FP": (x, w, y), "EB": (y, w, x), "WG": (y, x, w)}[PATTERNS[f["pattern"]]]
        return [(B[f["abuf"]], f["aaddr"], f["aaddr"] + a, False, None),
                (B[f["bbuf"]], f["baddr"], f["baddr"] + b, False, None),
                ("ABUF", f["caddr"], f["caddr"] + c, True, None)]
    if name == "RQ":
        c = f["n0"] * f["n1"] * f["n2"] * f["n3"]
        return [("ABUF", f["saddr"], f["saddr"] + c, False, None),
                (B[f["dbuf"]], f["daddr"], f["daddr"] + c, True, None)]
    if name in ("VMASK", "VADD"):
        c = f["count"]
        out = [(B[f["abuf"]], f["aaddr"], f["aaddr"] + c, False, None),
               (B[f["dbuf"]], f["daddr"], f["daddr"] + c, True, None)]
        if name == "VMASK" or f["nb"]:
            out.append((B[f["bbuf"]], f["baddr"], f["baddr"] + c, False, None))
        return out
    if name in ("MAXP", "MAXPB"):
        hw = f["planes"] * f["h"] * f["w"]
        oh = (f["h"] + 2 * f["ph"] - f["kh"]) // f["sh"] + 1
        ow = (f["w"] + 2 * f["pw"] - f["kw"]) // f["sw"] + 1
        o = f["planes"] * oh * ow
        if name == "MAXP":
            return [(B[f["sbuf"]], f["saddr"], f["saddr"] + hw, False, None),
                    (B[f["dbuf"]], f["daddr"], f["daddr"] + o, True, None)]
        return [(B[f["xbuf"]], f["xaddr"], f["xaddr"] + hw, False, None),
                (B[f["gbuf"]], f["gaddr"], f["gaddr"] + o, False, None),
                (B[f["dbuf"]], f["daddr"], f["daddr"] + hw, True, None)]
    if name == "RSUM":
        return [(B[f["sbuf"]], f["saddr"], f["saddr"] + f["n"] * f["c"] * f["hw"], False, None),
                ("ABUF", f["daddr"], f["daddr"] + f["c"], True, None)]
    if name == "CSTAT":
        return [(B[f["sbuf"]], f["saddr"], f["saddr"] + f["n"] * f["c"] * f["hw"], False, None),
                ("ABUF", f["daddr"], f["daddr"] + 2 * f["c"], True, None)]
    if name == "BNADAPT":
        c = f["c"]
        return [("ABUF", f["saddr"], f["saddr"] + 2 * c, False, None),
                ("ABUF", f["baddr"], f["baddr"] + c, True, None),
                (B[f["qbuf"]], f["qaddr"], f["qaddr"] + c, True, None)]
    if name == "LOSST":
        nk = f["n"] * f["k"]
        return [(B[f["zbuf"]], f["zaddr"], f["zaddr"] + nk, False, None),
                (B[f["tbuf"]], f["taddr"], f["taddr"] + nk, False, None),
                ("ABUF", f["lutaddr"], f["lutaddr"] + 256, False, None),
                ("ABUF", f["tlutaddr"], f["tlutaddr"] + 256, False, None),
                (B[f["dbuf"]], f["daddr"], f["daddr"] + nk, True, None)]
    if name == "LOSSG":
        nk = f["n"] * f["k"]
        return [(B[f["zbuf"]], f["zaddr"], f["zaddr"] + nk, False, None),
                ("ABUF", f["laddr"], f["laddr"] + f["n"], False, None),
                ("ABUF", f["lutaddr"], f["lutaddr"] + 256, False, None),
                (B[f["dbuf"]], f["daddr"], f["daddr"] + nk, True, None)]
    if name == "SGD":
        c = f["count"]
        return [*([] if f["ng"] else [(B[f["gbuf"]], f["gaddr"], f["gaddr"] + c, False, None)]),
                ("ABUF", f["maddr"], f["maddr"] + c, True, None),
                *([("ABUF", f["vaddr"], f["vaddr"] + c, True, None)] if f.get("mom") else []),
                (B[f["dbuf"]], f["daddr"], f["daddr"] + c, True, None)]
    return []       # SYNC, END, EXPUPD (XBUF: see footprint)


class _Range:
    __slots__ = ("lo", "hi", "kind", "writers", "readers", "either", "used")

    def __init__(self, lo, hi, kind=None):
        self.lo, self.hi, self.kind = lo, hi, kind
        self.writers = [-1, -1, -1]     # per queue: last index that wrote it (-1: none)
        self.readers = [-1, -1, -1]     # per queue: last index that read it since
        self.either = [-1, -1, -1]      # per queue: max of the two (what a write waits for)
        self.used = 0                   # last instruction that touched it


MAX_RANGES = 16      # per space; beyond that the least recently used ones are merged


class _Space:
    """The ranges accessed in one space, in first-access order, an index by extent (the
    first range of each (lo, hi, kind) in that order), and per queue the latest write and
    the latest access to the space (bounds of the ranges' writers and either: when a
    queue already knows of them, no range of the space can add a conflict)."""
    __slots__ = ("ranges", "by_key", "wrote", "touched")

    def __init__(self):
        self.ranges: list[_Range] = []
        self.by_key: dict = {}
        self.wrote = [-1, -1, -1]
        self.touched = [-1, -1, -1]

    def reindex(self) -> None:
        self.by_key = {}
        for e in reversed(self.ranges):
            self.by_key[e.lo, e.hi, e.kind] = e


class TokenPlanner:
    """Chooses the `dep` bits of each instruction as codegen emits it.  `patch(i, bits)`
    ORs push/pop bits into the already emitted instruction i."""

    def __init__(self, patch):
        self.patch = patch
        self.known = [[-1, -1, -1] for _ in range(3)]   # per queue: vector clock
        self.end: list[tuple] = []                      # per instruction: clock at its end
        self.last = [-1, -1, -1]                        # last instruction of each queue
        self.matched = {k: -1 for k in PUSH_BIT}        # (producer, consumer) -> last push
        self.pops = 0                                   # pop bits of the current one
        self.compute_pops = 0                           # pop bits of the last compute
        self.spaces: dict = defaultdict(_Space)         # space -> ranges accessed

    def conflicts(self, q: int, acc) -> dict[int, int]:
        """queue -> latest instruction of that queue that must finish first (unordered)."""
        m0 = m1 = m2 = -1
        spaces = self.spaces
        k0, k1, k2 = self.known[q]
        for space, lo, hi, write, kind in acc:
            sp = spaces[space]
            b0, b1, b2 = sp.touched if write else sp.wrote
            if b0 <= k0 and b1 <= k1 and b2 <= k2:      # all known already (q's own too)
                continue
            for e in sp.ranges:
                if e.kind != kind or (e.lo < hi and lo < e.hi):
                    w0, w1, w2 = e.either if write else e.writers
                    if w0 > m0:
                        m0 = w0
                    if w1 > m1:
                        m1 = w1
                    if w2 > m2:
                        m2 = w2
        k = self.known[q]
        return {r: i for r, i in ((0, m0), (1, m1), (2, m2)) if r != q and i > k[r]}

    def through_compute(self, p: int, j: int) -> int | None:
        """Make the latest compute instruction wait for instruction j of queue p (load or
        store); return its index, or None when a SYNC is needed."""
        c = self.last[1]
        if c < j:
            return None
        if self.end[c][p] >= j:
            return c
        bit = POP_BIT[1, p]
        if self.compute_pops & bit:
            return None
        self._pair(p, j, 1)
        self.patch(c, bit)
        self.compute_pops |= bit
        e = tuple(map(max, self.end[c], self.end[j]))
        self.end[c] = e
        self.known[1] = list(e)
        return c

    def _pair(self, p: int, j: int, q: int) -> None:
        """Token from instruction j (queue p) to a consumer on queue q (the caller sets
        the consumer's pop bit)."""
        assert j > self.matched[p, q], "token order"
        self.matched[p, q] = j
        self.patch(j, PUSH_BIT[p, q])

    def commit(self, i: int, q: int, need: dict[int, int], acc) -> int:
        """Record instruction i of queue q that must wait for `need`; return its pop bits
        (the pushers' words are patched)."""
        k = list(self.known[q])
        k[q] = max(k[q], self.last[q])
        pops = 0
        for p, j in sorted(need.items()):
            if j > k[p]:
                self._pair(p, j, q)
                pops |= POP_BIT[q, p]
            # ordered after j either way: what j knew holds here too
            k = list(map(max, k, self.end[j]))
        k[q] = i
        self.end.append(tuple(k))
        self.known[q] = k
        self.last[q] = i
        for space, lo, hi, write, kind in acc:
            sp = self.spaces[space]
            e = sp.by_key.get((lo, hi, kind))
            if e is None:
                e = _Range(lo, hi, kind)
                sp.ranges.append(e)
                sp.by_key[lo, hi, kind] = e
            if write:
                e.writers, e.readers = [-1, -1, -1], [-1, -1, -1]
                e.writers[q] = i
                e.either = list(e.writers)
                sp.wrote[q] = i
            else:
                e.readers[q] = e.either[q] = i      # i is the latest index of all
            sp.touched[q] = i
            e.used = i
            if len(sp.ranges) > MAX_RANGES:
                self._prune(sp)
        if q == 1:
            self.compute_pops = pops
        return pops

    def _prune(self, sp: _Space) -> None:
        """Drop ranges every queue already waited for; if still too many, merge the least
        recently used half into one conservative range (union extent, latest accesses)."""
        g = [min(self.known[q][r] for q in range(3)) for r in range(3)]
        lst = sp.ranges
        g0, g1, g2 = g
        lst[:] = [e for e in lst if e.either[0] > g0 or e.either[1] > g1 or e.either[2] > g2]
        if len(lst) > MAX_RANGES:
            lst.sort(key=lambda e: e.used)
            old = lst[:MAX_RANGES // 2]
            kinds = {e.kind for e in old}
            m = _Range(min(e.lo for e in old), max(e.hi for e in old),
                       kinds.pop() if len(kinds) == 1 else "mixed")   # mixed: hits all
            for e in old:
                m.writers = list(map(max, m.writers, e.writers))
                m.readers = list(map(max, m.readers, e.readers))
                m.either = list(map(max, m.either, e.either))
                m.used = max(m.used, e.used)
            lst[:MAX_RANGES // 2] = [m]
        sp.reindex()
