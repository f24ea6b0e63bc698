"""The machine's timing model: decoupled load / compute / store queues that synchronise
only through dependency tokens, and one DDR port they share.  The emulator
(runtime_emu/machine.py) feeds it every executed instruction; the compiler's static
replay (compiler/pipeline.py, for `edgec report`) feeds it the whole program.

Functional execution stays serial in program order (results never depend on timing);
this model only assigns every instruction a start and an end cycle:

* Every instruction belongs to one queue and one unit, and costs cycles given by its row
  of isa/table.py (Instr.queue, unit, cycles; the formulas are in isa/machine.py).  A
  queue runs its instructions in program order, one at a time.
* Channels (FIFOs of tokens) join neighbouring queues (isa/machine.py: NEIGHBOURS,
  CHANNELS): load->compute, compute->load, compute->store, store->compute.  `dep` bits:
  bit0 pop_prev, bit1 pop_next, bit2 push_prev, bit3 push_next (the load queue has no
  prev, the store queue no next).
* start = max(the queue's previous end, the stamp of every token it pops); a DMA
  (Instr.ddr_port: LD, LDCH, ST, STCH) then waits for the DDR port: its transfer part
  (cost - DDR latency) takes the earliest free window of the port at or after start +
  latency (the setup latency overlaps other transfers); end = start + cost otherwise.
* A push puts a token stamped with the pusher's end on the channel.  A pop takes the
  oldest token; with none there (no EARLIER instruction pushed one) the machine traps
  (TokenError here).
* END (Instr.barrier) waits for all three queues and traps if a token was never consumed.
* Counters: cycles = the latest end so far (END's end when the program finishes);
  cycles_dma / cycles_mac / cycles_vector stay the busy cycles of each unit.
"""
from __future__ import annotations

import bisect
from collections import deque
from typing import NamedTuple

from .machine import (CHANNELS, NEIGHBOURS, POP_NEXT, POP_PREV, PUSH_NEXT, PUSH_PREV,
                      QUEUE_ID, QUEUES, UNITS)
from .table import BY_NAME


class TokenError(Exception):
    """The token protocol is broken (the machine traps); the message says how."""


class _Plan(NamedTuple):
    """How one (instruction, dep) pair is timed: resolved once, then cached."""
    queue: int                  # index into QUEUES
    dma: bool                   # waits for the DDR port
    end: bool                   # END: waits for every queue, checks the channels drained
    pops: tuple                 # (channel deque, or None without a neighbour; the
                                #  message when it is None or empty)
    pushes: tuple               # channel deques (None: no neighbour, see bad_push)
    bad_push: str | None        # TokenError message of the first push to a missing neighbour
    counter: str                # the busy-cycle counter of the unit


class DdrPort:
    """Busy windows of the DDR port: sorted, disjoint [start, end) lists."""

    def __init__(self):
        self.starts: list[int] = []
        self.ends: list[int] = []

    def reserve(self, earliest: int, length: int) -> int:
        """Book the first free window of `length` cycles at or after `earliest`; return
        its start."""
        t, ends = earliest, self.ends
        if not ends or t >= ends[-1]:               # after every booked window
            if length:
                self.starts.append(t)
                ends.append(t + length)
            return t
        i = bisect.bisect_right(ends, t)            # first window ending after t
        while i < len(self.starts) and self.starts[i] < t + length:
            t = max(t, self.ends[i])
            i += 1
        if length:
            self.starts.insert(i, t)
            self.ends.insert(i, t + length)
        return t

    def forget_before(self, t: int) -> None:
        """Drop windows that end at or before t (nothing can start before t any more)."""
        k = bisect.bisect_right(self.ends, t)
        if k > 64:
            del self.starts[:k], self.ends[:k]


class Timeline:
    """Places instructions, in program order, on the queues (`issue`).  `counters` (the
    emulator's, or a fresh dict) gets cycles and cycles_<unit>."""

    def __init__(self, ddr_latency: int, counters: dict | None = None):
        self.latency = ddr_latency
        self.c = counters if counters is not None else dict.fromkeys(
            ("cycles", *("cycles_" + u for u in UNITS)), 0)
        self._free = [0] * len(QUEUES)
        self.chan = {ch: deque() for ch in CHANNELS}   # live tokens: their stamps
        self.port = DdrPort()
        self.issued = 0
        self._plans: dict[tuple, _Plan] = {}

    @property
    def free(self) -> dict[str, int]:
        """Queue -> the cycle its last instruction ends."""
        return dict(zip(QUEUES, self._free))

    def _plan(self, name: str, dep: int) -> _Plan:
        """What `dep` means for the instruction `name` (cached per (name, dep))."""
        ins = BY_NAME[name]
        queue = ins.queue

        def channel(side, push):
            other = NEIGHBOURS[queue][side == "next"]
            if other is None:
                return None, (f"dep {'push' if push else 'pop'}_{side}: the {queue} queue "
                              f"has no {side} queue")
            ch = (queue, other) if push else (other, queue)
            return self.chan[ch], (f"pop on {ch[0]}->{ch[1]} with no matching push (no "
                                   f"earlier instruction of the {ch[0]} queue pushed a token)")
        pops = tuple(channel(side, False) for side, bit in (("prev", POP_PREV),
                                                           ("next", POP_NEXT)) if dep & bit)
        pushes = tuple(channel(side, True) for side, bit in (("prev", PUSH_PREV),
                                                            ("next", PUSH_NEXT)) if dep & bit)
        bad_push = next((msg for ch, msg in pushes if ch is None), None)
        p = _Plan(QUEUE_ID[queue], ins.ddr_port, ins.barrier, pops,
                  tuple(ch for ch, _ in pushes), bad_push, "cycles_" + ins.unit)
        self._plans[name, dep] = p
        return p

    def issue(self, name: str, dep: int, cost: int) -> int:
        """Place one instruction of `cost` cycles; return its end cycle (TokenError on a
        token-protocol violation)."""
        p = self._plans.get((name, dep)) or self._plan(name, dep)
        free = self._free
        start = max(free) if p.end else free[p.queue]
        for ch, msg in p.pops:                      # check every pop before taking any
            if not ch:                              # no neighbour, or no token
                raise TokenError(msg)
        for ch, _ in p.pops:
            t = ch.popleft()
            if t > start:
                start = t
        if p.dma:
            lat = self.latency
            start = self.port.reserve(start + lat, cost - lat) - lat
        end = start + cost
        if p.bad_push:
            raise TokenError(p.bad_push)
        for ch in p.pushes:
            ch.append(end)
        free[p.queue] = end
        if p.end:
            left = {f"{a}->{b}": len(v) for (a, b), v in self.chan.items() if v}
            if left:
                raise TokenError("END with unconsumed dependency tokens: " + ", ".join(
                    f"{n} on {k}" for k, n in left.items()))
        c = self.c
        if end > c["cycles"]:
            c["cycles"] = end
        c[p.counter] += cost
        self.issued += 1
        if not self.issued & 4095:
            self.port.forget_before(min(free))
        return end

