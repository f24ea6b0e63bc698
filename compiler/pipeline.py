"""Static replay of the machine's timing (the semantics in isa/table.py, executed by
runtime_emu/timing.py): three in-order queues joined by token FIFOs, DMAs sharing one DDR
port.  compiler/report.py uses it so `edgec report` gives the emulator's cycle count
without running the program; tests check the two agree instruction by instruction.

    ends = replay(queues, deps, costs, dma, latency)     # end cycle of every instruction
"""
from __future__ import annotations

import bisect

from edgec.isa.errors import EdgecError

_Q = {"load": 0, "compute": 1, "store": 2}
# queue -> ((bit, producer queue) it pops, (bit, consumer queue) it pushes)
_POPS = {0: ((2, 1),), 1: ((1, 0), (2, 2)), 2: ((1, 1),)}
_PUSHES = {0: ((8, 1),), 1: ((4, 0), (8, 2)), 2: ((4, 1),)}


def _book(busy_s: list, busy_e: list, t: int, n: int) -> int:
    """Earliest t' >= t with [t', t'+n) free on the port; books it."""
    i = bisect.bisect_right(busy_e, t)
    while i < len(busy_s) and busy_s[i] < t + n:
        t = max(t, busy_e[i])
        i += 1
    if n:
        busy_s.insert(i, t)
        busy_e.insert(i, t + n)
    return t


def replay(names: list[str], queues: list[str], deps: list[int], costs: list[int],
           latency: int) -> list[int]:
    """End cycle of every instruction (END waits for every queue).  EdgecError when the
    token protocol is broken (the emulator would trap)."""
    free = [0, 0, 0]
    fifo = {(p, q): [] for q, pops in _POPS.items() for _, p in pops}
    head = dict.fromkeys(fifo, 0)
    bs: list[int] = []
    be: list[int] = []
    ends = []
    for i, (nm, qn, d, c) in enumerate(zip(names, queues, deps, costs)):
        q = _Q[qn]
        t = max(free) if nm == "END" else free[q]
        for bit, p in _POPS[q]:
            if d & bit:
                ch = fifo[p, q]
                if head[p, q] >= len(ch):
                    raise EdgecError(f"instruction {i} ({nm}): pops a token nobody pushed")
                t = max(t, ch[head[p, q]])
                head[p, q] += 1
        if nm in ("LD", "LDCH", "ST", "STCH"):
            t = _book(bs, be, t + latency, c - latency) - latency
        e = t + c
        for bit, r in _PUSHES[q]:
            if d & bit:
                fifo[q, r].append(e)
        free[q] = e
        ends.append(e)
        if i % 4096 == 4095:
            k = bisect.bisect_right(be, min(free))
            del bs[:k], be[:k]
    return ends
