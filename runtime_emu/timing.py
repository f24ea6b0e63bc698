"""The emulator's timing model: decoupled load / compute / store queues that synchronise
only through dependency tokens, and one DDR port they share.

Functional execution stays serial in program order (results never depend on timing);
this model only assigns every executed instruction a start and an end cycle:

* Every instruction belongs to one queue (isa/table.py: load = LD, LDCH, SEED; compute =
  MAC, vector ops, SYNC, END; store = ST, STCH).  A queue runs its instructions in program
  order, one at a time.
* Channels (FIFOs of tokens) join neighbouring queues: load->compute, compute->load,
  compute->store, store->compute.  `dep` bits: bit0 pop_prev, bit1 pop_next, bit2
  push_prev, bit3 push_next (the load queue has no prev, the store queue no next).
* start = max(the queue's previous end, the stamp of every token it pops); a DMA
  (LD, LDCH, ST, STCH) then waits for the DDR port: its transfer part (cost - DDR latency)
  takes the earliest free window of the port at or after start + latency (the setup
  latency overlaps other transfers); end = start + cost otherwise.
* A push puts a token stamped with the pusher's end on the channel.  A pop takes the
  oldest token; with none there (no EARLIER instruction pushed one) the machine traps.
* END waits for all three queues and traps if a token was never consumed.
* Counters: cycles = the latest end so far (END's end when the program finishes);
  cycles_dma / cycles_mac / cycles_vector stay the busy cycles of each unit.
"""
from __future__ import annotations

import bisect

from edgec.isa.table import QUEUES

from .state import Trap

POP_PREV, POP_NEXT, PUSH_PREV, PUSH_NEXT = 1, 2, 4, 8
DMA = frozenset(("LD", "LDCH", "ST", "STCH"))
# (queue, direction) -> channel; None: no neighbour on that side
_NEIGHBOUR = {("load", "prev"): None, ("load", "next"): "compute",
              ("compute", "prev"): "load", ("compute", "next"): "store",
              ("store", "prev"): "compute", ("store", "next"): None}


class DdrPort:
    """Busy windows of the DDR port: sorted, disjoint [start, end) lists."""

    def __init__(self):
        self.starts: list[int] = []
        self.ends: list[int] = []

    def reserve(self, earliest: int, length: int) -> int:
        """Book the first free window of `length` cycles at or after `earliest`; return
        its start."""
        t = earliest
        i = bisect.bisect_right(self.ends, t)       # first window ending after t
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


class Timing:
    def __init__(self, target, counters: dict):
        self.tg = target
        self.c = counters
        self.free = {q: 0 for q in QUEUES}
        self.chan = {(a, b): [] for a, b in (("load", "compute"), ("compute", "load"),
                                            ("compute", "store"), ("store", "compute"))}
        self.head = {k: 0 for k in self.chan}           # index of the oldest live token
        self.port = DdrPort()
        self.issued = 0

    def _channel(self, queue: str, side: str, push: bool, what: str):
        other = _NEIGHBOUR[queue, side]
        if other is None:
            raise Trap(f"dep {what}: the {queue} queue has no {side} queue")
        return (queue, other) if push else (other, queue)

    def issue(self, name: str, queue: str, dep: int, cost: int, unit: str) -> None:
        """Account one executed instruction (Trap on a token-protocol violation)."""
        start = self.free[queue] if name != "END" else max(self.free.values())
        pops = [(side, bit) for side, bit in (("prev", POP_PREV), ("next", POP_NEXT))
                if dep & bit]
        for side, _ in pops:
            ch = self._channel(queue, side, False, f"pop_{side}")
            if self.head[ch] >= len(self.chan[ch]):
                raise Trap(f"pop on {ch[0]}->{ch[1]} with no matching push (no earlier "
                           f"instruction of the {ch[0]} queue pushed a token)")
        for side, _ in pops:
            ch = self._channel(queue, side, False, f"pop_{side}")
            start = max(start, self.chan[ch][self.head[ch]])
            self.head[ch] += 1
        if name in DMA:
            lat = self.tg.ddr_latency
            start = self.port.reserve(start + lat, cost - lat) - lat
        end = start + cost
        for side, bit in (("prev", PUSH_PREV), ("next", PUSH_NEXT)):
            if dep & bit:
                self.chan[self._channel(queue, side, True, f"push_{side}")].append(end)
        self.free[queue] = end
        if name == "END":
            left = {f"{a}->{b}": len(v) - self.head[a, b] for (a, b), v in self.chan.items()
                    if len(v) > self.head[a, b]}
            if left:
                raise Trap("END with unconsumed dependency tokens: " + ", ".join(
                    f"{n} on {k}" for k, n in left.items()))
        c = self.c
        c["cycles"] = max(c["cycles"], end)
        c["cycles_" + unit] += cost
        self.issued += 1
        if self.issued % 4096 == 0:
            self.port.forget_before(min(self.free.values()))


def op_sync(m, f):
    """SYNC: no data effect; it exists to pass tokens between queues (1 cycle)."""
    return 1
