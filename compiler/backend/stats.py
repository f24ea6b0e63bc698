"""Static counts of an instruction stream: instructions, MACs and DDR bytes moved.

They follow from the fields alone (every loop is unrolled into the program): each
instruction's work formula in isa/table.py (Instr.work), so they equal what the emulator
counts when it runs the program.
"""
from __future__ import annotations

from edgec.isa.encoding import decode


def static_counts(words: list[bytes]) -> dict[str, int]:
    out = {"instructions": len(words), "macs": 0, "ddr_bytes": 0}
    for w in words:
        ins, f = decode(w)
        macs, ddr_bytes, _ = ins.work(f)
        out["macs"] += macs
        out["ddr_bytes"] += ddr_bytes
    return out
