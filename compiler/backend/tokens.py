"""Dependency tokens, derived from what every instruction reads and writes.

The machine runs three queues (load, compute, store) concurrently; only tokens order
instructions of different queues (isa/table.py).  Codegen emits instructions in program
order with double-buffered addresses; for each one this planner

1. computes its footprint: the ranges the machine model says it reads or writes
   (Instr.footprint, isa/machine.py), element ranges of IBUF/WBUF/ABUF/XBUF and a byte
   range of DDR per tensor (`footprint`; a gathered DMA dimension may touch any row of
   its tensor, so those count the whole tensor unless codegen names the rows);
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

from edgec.isa.machine import (NEIGHBOURS, POP_NEXT, POP_PREV, PUSH_NEXT, PUSH_PREV,
                               QUEUE_ID, QUEUES, XBUF_WORDS)
from edgec.isa.table import BY_NAME

QUEUE = QUEUE_ID
# (consumer, producer) -> pop bit of the consumer; (producer, consumer) -> push bit
POP_BIT = {(QUEUE_ID[q], QUEUE_ID[n]): bit for q in QUEUES
           for bit, n in zip((POP_PREV, POP_NEXT), NEIGHBOURS[q]) if n is not None}
PUSH_BIT = {(QUEUE_ID[q], QUEUE_ID[n]): bit for q in QUEUES
            for bit, n in zip((PUSH_PREV, PUSH_NEXT), NEIGHBOURS[q]) if n is not None}

_XBUF_ALL = ("XBUF", 0, XBUF_WORDS, True, None)


def footprint(name: str, f: dict, sym=None, rows=None) -> list[tuple]:
    """[(space, lo, hi, is_write, kind)] of one instruction: its machine footprint
    (Instr.footprint, isa/machine.py) as the planner tracks it.  Spaces IBUF/WBUF/ABUF
    (elements, kind None) and ("DDR", tensor address) (tensors never overlap, so only
    ranges of one tensor are compared).  A DDR range is in bytes (kind None) or, for a
    channel-bank DMA, `rows` = (("tab", table), lo, hi): entries [lo, hi) of that index
    table (the mask lists kept channels once each, so disjoint entries are disjoint
    rows); ranges of different kinds always conflict.  A gathered DMA without `rows`
    counts the whole tensor `sym`.  Index tables are read-only data and not tracked.
    A compute instruction's XBUF accesses (exponents, statistics, EXPUPD) count as one
    read and write of all of XBUF, last: only the table's LD and ST on the other queues
    meet it.  `f` may omit fields (they encode as 0)."""
    ins = BY_NAME[name]
    ddr = ("DDR", sym.addr if sym else None)
    out, xbuf = [], False
    for space, lo, hi, write, operand in ins.footprint(defaultdict(int, f)):
        if space == "DDR":
            if operand.startswith("tab"):
                continue
            kind = None
            if operand == "box" and rows is not None:
                kind, lo, hi = rows
            elif hi is None:
                if sym is None:
                    raise ValueError(f"{name}: a channel-bank DMA needs its tensor")
                lo, hi = sym.addr, sym.addr + sym.nbytes
            out.append((ddr, lo, hi, write, kind))
        elif space == "XBUF" and ins.queue == "compute":
            xbuf = True
        else:
            out.append((space, lo, hi, write, None))
    if xbuf:
        out.append(_XBUF_ALL)
    return out


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
