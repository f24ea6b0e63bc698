"""Static replay of the machine's timing: the timing model of isa/timeline.py (the one the
emulator runs: three in-order queues joined by token FIFOs, DMAs sharing one DDR port)
fed with every instruction of a program and its cost (Instr.cycles, isa/machine.py).
compiler/report.py uses it so `edgec report` gives the emulator's cycle count without
running the program; tests check the two agree instruction by instruction.

    ends = replay(names, deps, costs, latency)     # end cycle of every instruction
"""
from __future__ import annotations

from edgec.isa.errors import EdgecError
from edgec.isa.timeline import Timeline, TokenError


def replay(names: list[str], deps: list[int], costs: list[int], latency: int) -> list[int]:
    """End cycle of every instruction.  EdgecError naming the instruction when the token
    protocol is broken (the emulator would trap)."""
    issue = Timeline(latency).issue
    ends = []
    for i, (nm, d, c) in enumerate(zip(names, deps, costs)):
        try:
            ends.append(issue(nm, d, c))
        except TokenError as e:
            raise EdgecError(f"instruction {i} ({nm}): {e}; the emulator would trap") \
                from None
    return ends
