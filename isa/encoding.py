"""Encode and decode instruction words, derived from isa/table.py."""
from __future__ import annotations

from .errors import EdgecError
from .table import BY_NAME, BY_OPCODE, WORD_BITS, WORD_BYTES, Instr


def _layout(ins: Instr) -> tuple:
    """(name, bit position, mask, lo, hi, signed, bits) per field, in packing order."""
    out, pos = [], 0
    for f in ins.all_fields:
        lo, hi = ((-(1 << (f.bits - 1)), (1 << (f.bits - 1)) - 1) if f.signed
                  else (0, (1 << f.bits) - 1))
        out.append((f.name, pos, (1 << f.bits) - 1, lo, hi, f.signed, f.bits))
        pos += f.bits
    return tuple(out)


_LAYOUT = {i.name: _layout(i) for i in BY_NAME.values()}
# name -> {field: (bit position, mask, lo, hi, signed, bits)}: encode visits only the
# fields it is given (an absent field is 0, which every field can hold)
_FIELDS = {n: {f[0]: f[1:] for f in lay} for n, lay in _LAYOUT.items()}


def encode(name: str, dep: int = 0, **fields: int) -> bytes:
    """One instruction word.  Unknown or out-of-range fields raise EdgecError."""
    ins = BY_NAME.get(name)
    if ins is None:
        raise EdgecError(f"unknown instruction {name!r}")
    layout = _FIELDS[name]
    fields["opcode"], fields["dep"] = ins.opcode, dep
    word = 0
    for fname, v in fields.items():
        f = layout.get(fname)
        if f is None:
            extra = set(fields) - set(layout)
            raise EdgecError(f"{name}: unknown field(s) {', '.join(sorted(extra))}")
        pos, mask, lo, hi, signed, bits = f
        v = int(v)
        if not lo <= v <= hi:
            raise EdgecError(f"{name}: field {fname}={v} does not fit in {bits} "
                             f"{'signed ' if signed else ''}bits")
        word |= (v & mask) << pos
    return word.to_bytes(WORD_BYTES, "little")


def decode(word: bytes, index: int | None = None) -> tuple[Instr, dict[str, int]]:
    """Instruction and field values of one word.  Malformed words raise EdgecError."""
    where = f"instruction {index}" if index is not None else "instruction"
    if len(word) != WORD_BYTES:
        raise EdgecError(f"{where}: word is {len(word)} bytes, expected {WORD_BYTES}")
    w = int.from_bytes(word, "little")
    ins = BY_OPCODE.get(w & 0xFF)
    if ins is None:
        raise EdgecError(f"{where}: unknown opcode {w & 0xFF}")
    out, pos = {}, 0
    for f in ins.all_fields:
        v = (w >> pos) & ((1 << f.bits) - 1)
        if f.signed and v >> (f.bits - 1):
            v -= 1 << f.bits
        out[f.name] = v
        pos += f.bits
    if w >> pos:
        raise EdgecError(f"{where} ({ins.name}): stray bits set above bit {pos} of the word")
    del out["opcode"]
    return ins, out


def decode_all(code: bytes) -> list[tuple[Instr, dict[str, int]]]:
    if len(code) % WORD_BYTES:
        raise EdgecError(f"code section is {len(code)} bytes, not a multiple of {WORD_BYTES}")
    return [decode(code[i:i + WORD_BYTES], i // WORD_BYTES)
            for i in range(0, len(code), WORD_BYTES)]


assert WORD_BITS == WORD_BYTES * 8
