"""Encode and decode instruction words, derived from isa/table.py."""
from __future__ import annotations

import numpy as np

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
_ZEROS = (0,) * 64           # map(fields.get, names, _ZEROS): absent fields read as 0


# name -> ((field, lo, hi), ...): the fields whose valid range is narrower than their bits
_VALID = {i.name: tuple((f.name, *f.valid) for f in i.fields if f.valid is not None)
          for i in BY_NAME.values()}


def invalid_field(name: str, fields: dict) -> str | None:
    """The first field of an instruction outside the values the machine accepts (Field.
    valid; the emulator traps on it), as "field shift=70 outside [-31, 31]"; None if all
    are valid.  encode() packs any value that fits the bits (a test may build a word the
    machine refuses); the compiler and the assembler check this as well."""
    for fname, lo, hi in _VALID.get(name, ()):
        v = fields.get(fname, 0)
        if not lo <= v <= hi:
            return f"field {fname}={v} outside [{lo}, {hi}]"
    return None


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


def encode_all(names: list[str], deps: list[int], fields: list[dict]) -> bytes:
    """b"".join(encode(names[i], deps[i], **fields[i]) for every i), vectorised over the
    instructions of each name (one int64 column per field, shifted into 64-bit lanes).
    The first instruction (in order) that encode() would refuse raises its EdgecError."""
    n = len(names)
    rows_of: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        rows_of.setdefault(name, []).append(i)
    lanes = np.zeros((n, WORD_BYTES // 8), dtype=np.uint64)
    bad: list[int] = []                            # first refused row of each name
    for name, rows in rows_of.items():
        layout = _LAYOUT.get(name)
        group = [fields[i] for i in rows]
        if layout is None or set().union(*group) - set(_FIELDS[name]) - {"opcode", "dep"}:
            bad.append(next(i for i in rows if layout is None
                            or set(fields[i]) - set(_FIELDS[name])))
            continue
        names_ = [f[0] for f in layout[2:]]           # after opcode and dep
        try:
            cols = np.array([tuple(map(f.get, names_, _ZEROS)) for f in group],
                            dtype=np.int64).reshape(len(rows), len(names_)).T
        except (OverflowError, TypeError, ValueError):   # a value no int64 holds
            for i in rows:
                try:
                    encode(names[i], deps[i], **fields[i])
                except Exception:
                    bad.append(i)
                    break
            continue
        cols = [np.full(len(rows), BY_NAME[name].opcode, dtype=np.int64),
                np.array([deps[i] for i in rows], dtype=np.int64), *cols]
        w = np.zeros((len(rows), WORD_BYTES // 8), dtype=np.uint64)
        ok = np.ones(len(rows), dtype=bool)
        for (_fname, pos, mask, lo, hi, _signed, bits), col in zip(layout, cols):
            ok &= (col >= lo) & (col <= hi)
            v = (col & mask).astype(np.uint64)
            lane, off = divmod(pos, 64)
            w[:, lane] |= v << np.uint64(off)
            if off + bits > 64:
                w[:, lane + 1] |= v >> np.uint64(64 - off)
        if not ok.all():
            bad.append(rows[int(np.argmin(ok))])
        lanes[rows] = w
    if bad:
        i = min(bad)
        try:
            encode(names[i], deps[i], **fields[i])         # raises its EdgecError
        except EdgecError as e:
            e.index = i                                    # which instruction
            raise
        raise AssertionError(f"encode_all: instruction {i} refused but encodes")
    return lanes.astype("<u8").tobytes()


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
    """decode() of every word of a code section: the same (Instr, fields) values, but
    vectorised over the distinct words of each opcode, and identical words share ONE
    fields dict (treat it as read-only).  The first malformed word raises decode()'s
    EdgecError for it."""
    if len(code) % WORD_BYTES:
        raise EdgecError(f"code section is {len(code)} bytes, not a multiple of {WORD_BYTES}")
    words = [code[i:i + WORD_BYTES] for i in range(0, len(code), WORD_BYTES)]
    slot: dict[bytes, int] = {}                    # distinct word -> its row
    rows_of = [slot.setdefault(w, len(slot)) for w in words]
    lanes = np.frombuffer(b"".join(slot), dtype="<u8").reshape(len(slot), WORD_BYTES // 8)
    opcodes = lanes[:, 0] & np.uint64(0xFF)
    decoded: list = [None] * len(slot)
    for op in np.unique(opcodes).tolist():
        ins = BY_OPCODE.get(op)
        if ins is None:
            continue
        rows = np.flatnonzero(opcodes == op)
        w = lanes[rows]
        ok = np.ones(len(rows), dtype=bool)
        cols, names = [], []
        end = 0
        for fname, pos, mask, _lo, _hi, signed, bits in _LAYOUT[ins.name]:
            end = pos + bits
            if fname == "opcode":
                continue
            lane, off = divmod(pos, 64)
            v = w[:, lane] >> np.uint64(off)
            if off + bits > 64:
                v |= w[:, lane + 1] << np.uint64(64 - off)
            v = (v & np.uint64(mask)).astype(np.int64)
            if signed:
                v -= (v >> (bits - 1)) << bits
            cols.append(v.tolist())
            names.append(fname)
        lane, off = divmod(end, 64)
        if lane < w.shape[1]:                      # bits above the last field must be 0
            ok &= (w[:, lane] >> np.uint64(off)) == 0
            ok &= ~w[:, lane + 1:].any(axis=1)
        for r, vals, good in zip(rows.tolist(), zip(*cols) if cols else [()] * len(rows),
                                 ok.tolist()):
            if good:
                decoded[r] = (ins, dict(zip(names, vals)))
    out = [decoded[r] for r in rows_of]
    if None in out:
        i = out.index(None)
        decode(words[i], i)                                 # raises its EdgecError
        raise AssertionError(f"decode_all: word {i} flagged malformed but decodes")
    return out


assert WORD_BITS == WORD_BYTES * 8
