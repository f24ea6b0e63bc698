"""Static counts of an instruction stream: instructions, MACs and DDR bytes moved.

They follow from the fields alone (every loop is unrolled into the program), so they equal
what the emulator counts when it runs the program.
"""
from __future__ import annotations

from edgec.isa.encoding import decode


def static_counts(words: list[bytes]) -> dict[str, int]:
    out = {"instructions": len(words), "macs": 0, "ddr_bytes": 0}
    for w in words:
        ins, f = decode(w)
        if ins.name == "MAC":
            out["macs"] += (f["n"] * f["yh"] * f["yw"] * f["kh"] * f["kw"] * f["ci"] * f["co"]
                            * max(1, f.get("g", 1)))
        elif ins.name in ("LD", "LDCH", "ST", "STCH"):
            out["ddr_bytes"] += f["esize"] * f["n0"] * f["n1"] * f["n2"] * f["n3"]
    return out
