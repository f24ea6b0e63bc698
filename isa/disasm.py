"""Disassembler: prog.bin -> assembly text that `edgec asm` turns back into the same bytes.

Derived from the ISA table (mnemonics, field names, value spellings).  The text format:

    ; comments start with ';' and run to the end of the line
    .target <16 hex digits>          target fingerprint
    .ddr_size <int>                  DDR size in bytes
    <index>: MNEMONIC field=value ...   one instruction per line; the "index:" prefix is
                                     informational (the assembler ignores it); dep=0 is
                                     omitted (every omitted field assembles as 0)
    .word <128 hex digits>           a raw little-endian word (only for undecodable words)
    .data_size <int>                 length of the data section in bytes
    .data <addr> <hex bytes>         data bytes at DDR address addr (gaps are zeros; the
                                     disassembler omits all-zero runs)
    .symbol {json}                   one symbol-table entry
    .meta {json}                     the program's meta dictionary

Values: integers (decimal, 0x hex, 0b binary, optionally signed), or a name for the
enumerated field kinds in FIELD_SPELLINGS (buffers, MAC patterns, rounding modes,
dependency tokens: dep=pop_prev_push_next etc., the set bits joined by '_').
"""
from __future__ import annotations

import json

from .container import DTYPE_BYTES, Program
from .encoding import decode
from .errors import EdgecError
from .table import BUFFERS, DEP_NAMES, PATTERNS, ROUND_MODES, WORD_BYTES

# field kind -> value names (index = encoded value); the assembler uses the same table
FIELD_SPELLINGS: dict[str, tuple[str, ...]] = {
    "buf": BUFFERS,
    "pattern": PATTERNS,
    "round": ROUND_MODES,
    "dep": DEP_NAMES,
}
DATA_LINE_BYTES = 32
SYMBOL_KEY_ORDER = ("name", "kind", "addr", "shape", "dtype", "exp", "value")


def _nbytes(s: dict) -> int:
    n = DTYPE_BYTES[s["dtype"]]
    for d in s["shape"]:
        n *= d
    return n


def _symbol_at(symbols: list[dict], addr: int) -> str | None:
    for s in symbols:
        if s["addr"] <= addr < s["addr"] + max(_nbytes(s), 1):
            off = addr - s["addr"]
            return s["name"] + (f"+{off}" if off else "")
    return None


def format_field(f, v: int) -> str:
    names = FIELD_SPELLINGS.get(f.kind)
    if names is not None and 0 <= v < len(names):
        return names[v]
    return str(v)


def _symbol_json(s: dict) -> str:
    keys = [k for k in SYMBOL_KEY_ORDER if k in s] + sorted(k for k in s
                                                            if k not in SYMBOL_KEY_ORDER)
    return json.dumps({k: s[k] for k in keys}, separators=(",", ":"))


def format_instruction(ins, vals: dict[str, int], symbols: list[dict]) -> tuple[str, list[str]]:
    """("MNEMONIC f=v ...", notes) for one decoded instruction."""
    parts, notes = [], []
    for f in ins.all_fields[1:]:
        v = vals[f.name]
        if f.name == "dep" and v == 0:
            continue
        parts.append(f"{f.name}={format_field(f, v)}")
        if f.kind == "ddr" and ("gather" not in vals or f.name == "ddr"
                                or vals.get("gather", 0) & (1 if f.name == "tab0" else 2)):
            sym = _symbol_at(symbols, v)
            if sym:
                notes.append(f"{f.name}: {sym}")
    return f"{ins.name:<6} " + " ".join(parts), notes


def _data_lines(p: Program) -> list[str]:
    data = p.data
    starts: dict[int, list[dict]] = {}
    for s in p.symbols:
        if 0 <= s["addr"] < len(data):
            starts.setdefault(s["addr"], []).append(s)
    bounds = sorted(set(starts) | {0, len(data)})
    out = []
    for lo, hi in zip(bounds, bounds[1:]):
        for s in starts.get(lo, ()):
            exp = "" if s.get("exp") is None else f" exp {s['exp']}"
            out.append(f"; {s['name']}: {s['kind']} {s['dtype']} {list(s['shape'])}{exp}")
        for a in range(lo, hi, DATA_LINE_BYTES):
            chunk = data[a:min(a + DATA_LINE_BYTES, hi)]
            if any(chunk):
                out.append(f".data 0x{a:08x} {chunk.hex()}")
    return out


def disassemble(p: Program) -> list[str]:
    n = len(p.code) // WORD_BYTES
    origin = p.meta.get("origin") if isinstance(p.meta, dict) else None
    if not (isinstance(origin, list) and len(origin) == n):
        origin = None
    lines = [f"; edgec program: {n} instructions, {len(p.data)} data bytes, "
             f"DDR {p.ddr_size} bytes, target {p.target_fp.hex()}",
             "; rebuild the identical prog.bin with: edgec asm FILE.s -o prog.bin",
             f".target {p.target_fp.hex()}",
             f".ddr_size {p.ddr_size}",
             "",
             f"; code: {n} instructions"]
    for i in range(n):
        word = p.code[i * WORD_BYTES:(i + 1) * WORD_BYTES]
        try:
            ins, vals = decode(word, i)
        except EdgecError as e:
            lines.append(f"{i:6d}: .word {word.hex()}   ; undecodable: {e}")
            continue
        text, notes = format_instruction(ins, vals, p.symbols)
        if origin is not None and origin[i]:
            notes.insert(0, str(origin[i]))
        line = f"{i:6d}: {text}"
        if notes:
            line += "   ; " + " | ".join(notes)
        lines.append(line)
    lines += ["", "; data: initial DDR image, loaded at address 0 "
              f"(all-zero {DATA_LINE_BYTES}-byte runs omitted)",
              f".data_size {len(p.data)}"]
    lines += _data_lines(p)
    lines += ["", f"; symbols: {len(p.symbols)}"]
    lines += [f".symbol {_symbol_json(s)}" for s in p.symbols]
    lines += ["", "; meta", ".meta " + json.dumps(p.meta, sort_keys=True,
                                                  separators=(",", ":"))]
    return lines
