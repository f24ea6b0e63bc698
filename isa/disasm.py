"""Disassembler: one instruction per line, fields named, DDR addresses annotated with the
symbol they fall in.  Derived from the ISA table."""
from __future__ import annotations

from .container import DTYPE_BYTES, Program
from .encoding import decode_all
from .table import BUFFERS, PATTERNS, ROUND_MODES, WORD_BYTES


def _symbol_at(symbols: list[dict], addr: int) -> str | None:
    for s in symbols:
        n = DTYPE_BYTES[s["dtype"]]
        for d in s["shape"]:
            n *= d
        if s["addr"] <= addr < s["addr"] + max(n, 1):
            off = addr - s["addr"]
            return s["name"] + (f"+{off}" if off else "")
    return None


def format_field(f, v: int) -> str:
    if f.kind == "buf":
        return BUFFERS[v] if v < len(BUFFERS) else str(v)
    if f.kind == "pattern":
        return PATTERNS[v] if v < len(PATTERNS) else str(v)
    if f.kind == "round":
        return ROUND_MODES[v]
    return str(v)


def disassemble(p: Program) -> list[str]:
    lines = [f"; edgec program: {p.n_instr} instructions, {len(p.data)} data bytes, "
             f"DDR {p.ddr_size} bytes, target {p.target_fp.hex()}"]
    for i, (ins, vals) in enumerate(decode_all(p.code)):
        parts, notes = [], []
        for f in ins.all_fields[1:]:
            v = vals[f.name]
            if f.name == "dep" and v == 0:
                continue
            parts.append(f"{f.name}={format_field(f, v)}")
            if f.kind == "ddr" and (ins.name != "LDCH" and ins.name != "STCH"
                                    or f.name == "ddr" or vals.get("gather", 0)
                                    & (1 if f.name == "tab0" else 2)):
                sym = _symbol_at(p.symbols, v)
                if sym:
                    notes.append(f"{f.name}: {sym}")
        line = f"{i:6d}: {ins.name:<6} " + " ".join(parts)
        if notes:
            line += "   ; " + ", ".join(notes)
        lines.append(line)
    assert WORD_BYTES
    return lines
