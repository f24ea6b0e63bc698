"""The translated run: `run(machine)` executes the program through its translation
blocks (translate.py, blockexec.py), interpreting every word outside a block, and a
block whose run-time checks refuse it, with the interpreter's own instruction functions.

Counters and cycles do not depend on data: the translation ran the timing model once, so
`instructions`, the per-mnemonic counts and the cycle counters are set from it (after
END, or before the word that traps); `macs` and the DDR byte counts are added by the
interpreted words' functions and by each block's fixed totals.  Where the timing model
refused a word (a token-protocol violation, a malformed word) the run hands over to the
interpreter there (`Machine._execute`), with the timing model replayed up to that word.
"""
from __future__ import annotations

import numpy as np

from edgec.isa.errors import TrapError
from edgec.isa.timeline import Timeline

from .blockexec import execute
from .ops import OPS
from .state import Trap
from .translate import _NAMES, cached

_CYCLES = ("cycles", "cycles_dma", "cycles_mac", "cycles_vector")


def _set_counts(m, tr, k: int) -> None:
    """instructions, the per-mnemonic counts and the cycle counters as the interpreter
    has them before it executes word k (k <= tr.limit)."""
    c = m.counters
    counts = np.bincount(tr.opcodes[:k], minlength=len(_NAMES))
    for name, n in zip(_NAMES, counts):
        c[name] = int(n)
    c["instructions"] = k
    row = tr.cycles[k - 1] if k else (0, 0, 0, 0)
    for name, v in zip(_CYCLES, row):
        c[name] = int(v)


def _interpret(m, start: int, stop: int, tr) -> None:
    instrs = m.instrs
    for pc in range(start, stop):
        m.pc = pc
        ins, f = instrs[pc]
        try:
            OPS[ins.name](m, f)
        except Trap as t:
            _set_counts(m, tr, pc)
            raise TrapError(pc, ins.name, str(t)) from None
        if m.halted:
            return


def run(m) -> None:
    """Execute the whole program from pc 0 (see the module docstring)."""
    tr = cached(m)
    for start, stop, blk in tr.plan:
        if blk is not None and execute(m, blk):
            continue
        _interpret(m, start, stop, tr)
        if m.halted:
            _set_counts(m, tr, m.pc + 1)
            m.timing = tr.timeline
            m.pc += 1
            return
    # the timing model stopped before END: the interpreter takes over at tr.limit
    _set_counts(m, tr, tr.limit)
    for name in _CYCLES:
        m.counters[name] = 0
    m.timing = Timeline(m.target.ddr_latency, m.counters)
    issue = m.timing.issue
    for ins, f in m.instrs[:tr.limit]:
        issue(ins.name, f["dep"], ins.cycles(f, m.target))
    m.pc = tr.limit
    m._execute(len(m.instrs) - tr.limit + 1)
