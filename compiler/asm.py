"""Assembler: the text `edgec disasm` prints -> prog.bin, byte for byte.

The grammar (asm.lark, next to this file) fixes only the line shapes; mnemonics, field
names, bit widths and value spellings come from edgec.isa.table (and the disassembler's
FIELD_SPELLINGS), so a change to the ISA table changes the assembler with it.  Every
defect is an EdgecError "FILE:LINE:COL: message".
"""
from __future__ import annotations

import difflib
import json
import re
import struct

import lark

from edgec.isa.container import Program, read_program, write_program
from edgec.isa.disasm import FIELD_SPELLINGS
from edgec.isa.encoding import encode
from edgec.isa.errors import EdgecError

from .grammars import lalr_parser, read_source
from edgec.isa.table import BY_NAME, WORD_BYTES

_HUMAN = {
    "NAME": "a name", "INT": "an integer", "HEX": "hex digits", "JSON": "a JSON object",
    "_NL": "end of line", "$END": "end of file", "COLON": "':'", "EQUAL": "'='",
}


def _parser() -> lark.Lark:
    return lalr_parser(__file__, "asm.lark")


def _human(name: str) -> str:
    if name in _HUMAN:
        return _HUMAN[name]
    try:
        pat = _parser().get_terminal(name).pattern
    except KeyError:
        return name
    if isinstance(pat, lark.lexer.PatternStr):
        return repr(pat.value)
    return name.lower()


def _expected(names) -> str:
    shown = sorted({_human(n) for n in names})
    if not shown:
        return ""
    if len(shown) == 1:
        return f"; expected {shown[0]}"
    return "; expected " + ", ".join(shown[:-1]) + " or " + shown[-1]


def _end_pos(text: str) -> tuple[int, int]:
    lines = text.split("\n")
    return len(lines), len(lines[-1]) + 1


def _parse(text: str, path: str) -> lark.Tree:
    try:
        return _parser().parse(text)
    except lark.exceptions.UnexpectedToken as e:
        tok = e.token
        if tok.type == "$END":
            line, col = _end_pos(text)
            what = "end of file"
        else:
            line, col = e.line, e.column
            what = "end of line" if tok.type == "_NL" else repr(str(tok))
        raise EdgecError(f"{path}:{line}:{col}: syntax error: unexpected {what}"
                         f"{_expected(e.expected)}") from None
    except lark.exceptions.UnexpectedCharacters as e:
        ch = text[e.pos_in_stream] if e.pos_in_stream < len(text) else ""
        raise EdgecError(f"{path}:{e.line}:{e.column}: syntax error: unexpected character "
                         f"{ch!r}{_expected(e.allowed or ())}") from None
    except lark.exceptions.UnexpectedEOF as e:
        line, col = _end_pos(text)
        raise EdgecError(f"{path}:{line}:{col}: syntax error: unexpected end of file"
                         f"{_expected(e.expected)}") from None


def _hint(word: str, choices) -> str:
    choices = list(choices)
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.5)
    if not close:
        close = [c for c in choices if c.lower() == word.lower()]
    if close:
        return "; did you mean " + " or ".join(repr(c) for c in close) + "?"
    return "; expected one of " + ", ".join(choices)


def _int(tok, at) -> int:
    s = str(tok)
    try:
        body = s.lstrip("+-")
        return int(s, 0) if body[1:2] in ("x", "X", "b", "B") else int(s, 10)
    except ValueError:
        raise EdgecError(f"{at(tok)}: bad integer {s!r}") from None


class _Asm:
    def __init__(self, path: str):
        self.path = path
        self.code: list[bytes] = []
        self.chunks: list[tuple[int, bytes, object]] = []   # (addr, bytes, token)
        self.symbols: list[dict] = []
        self.sym_toks: list = []                          # .symbol tokens, in order
        self.once: dict[str, object] = {}                 # directive -> (value, token)

    def at(self, tok) -> str:
        return f"{self.path}:{tok.line}:{tok.column}"

    def err(self, tok, msg: str):
        raise EdgecError(f"{self.at(tok)}: {msg}")

    # -- statements -------------------------------------------------------------------
    def instr(self, node):
        kids = [k for k in node.children if not (isinstance(k, lark.Tree) and k.data == "index")]
        mtok, fields = kids[0], kids[1:]
        ins = BY_NAME.get(str(mtok))
        if ins is None:
            self.err(mtok, f"unknown instruction {str(mtok)!r}{_hint(str(mtok), BY_NAME)}")
        table = {f.name: f for f in ins.all_fields[1:]}          # opcode is the mnemonic
        vals: dict[str, int] = {}
        for fnode in fields:
            ntok, vnode = fnode.children
            vtok = vnode.children[0]
            name = str(ntok)
            f = table.get(name)
            if f is None:
                extra = (" (the opcode is given by the mnemonic)" if name == "opcode" else
                         _hint(name, table))
                self.err(ntok, f"{ins.name} has no field {name!r}{extra}")
            if name in vals:
                self.err(ntok, f"field {name!r} given twice")
            names = FIELD_SPELLINGS.get(f.kind)
            if vtok.type == "NAME":
                if names is None:
                    self.err(vtok, f"field {name!r} takes an integer, not {str(vtok)!r}")
                if str(vtok) not in names:
                    self.err(vtok, f"bad value {str(vtok)!r} for {name!r}"
                             f"{_hint(str(vtok), names)}")
                v = names.index(str(vtok))
            else:
                v = _int(vtok, self.at)
            lo, hi = ((-(1 << (f.bits - 1)), (1 << (f.bits - 1)) - 1) if f.signed
                      else (0, (1 << f.bits) - 1))
            if not lo <= v <= hi:
                self.err(vtok, f"{ins.name} field {name}={v} out of range: it is "
                         f"{f.bits} bits {'signed' if f.signed else 'unsigned'} "
                         f"({lo}..{hi})")
            vals[name] = v
            if f.valid is not None and not f.valid[0] <= v <= f.valid[1]:
                self.err(vtok, f"{ins.name} field {name}={v} outside [{f.valid[0]}, "
                         f"{f.valid[1]}] (the machine traps on it)")
        missing = [f.name for f in ins.fields if f.name not in vals]
        if missing:
            self.err(mtok, f"{ins.name}: missing field{'s' if len(missing) > 1 else ''} "
                     f"{', '.join(missing)} (every field but dep must be given; "
                     f"edgec disasm writes them all)")
        self.code.append(encode(ins.name, **vals))

    def word(self, node):
        htok = node.children[-1]
        s = str(htok)
        if len(s) != 2 * WORD_BYTES:
            self.err(htok, f".word needs exactly {2 * WORD_BYTES} hex digits "
                     f"({WORD_BYTES} bytes), got {len(s)}")
        self.code.append(bytes.fromhex(s))

    def _once(self, node, value):
        key = node.data
        if key in self.once:
            prev = self.once[key][1]
            self.err(node.meta, f".{key} given twice (first on line {prev.line})")
        self.once[key] = (value, node.meta)

    def target(self, node):
        htok = node.children[0]
        if len(str(htok)) != 16:
            self.err(htok, f".target needs 16 hex digits (an 8-byte fingerprint), "
                     f"got {len(str(htok))}")
        self._once(node, bytes.fromhex(str(htok)))

    def ddr_size(self, node):
        tok = node.children[0]
        v = _int(tok, self.at)
        if not 0 <= v < 1 << 32:
            self.err(tok, f".ddr_size {v} out of range (0..{(1 << 32) - 1})")
        self._once(node, v)

    def data_size(self, node):
        tok = node.children[0]
        v = _int(tok, self.at)
        if not 0 <= v < 1 << 32:
            self.err(tok, f".data_size {v} out of range (0..{(1 << 32) - 1})")
        self._once(node, v)

    def data(self, node):
        atok, htok = node.children
        addr = _int(atok, self.at)
        if addr < 0:
            self.err(atok, f"negative data address {addr}")
        if len(str(htok)) % 2:
            self.err(htok, f"odd number of hex digits ({len(str(htok))}): each byte is two")
        self.chunks.append((addr, bytes.fromhex(str(htok)), atok))

    def _json(self, node) -> object:
        tok = node.children[0]
        try:
            return json.loads(str(tok))
        except json.JSONDecodeError as e:
            raise EdgecError(f"{self.path}:{tok.line}:{tok.column + e.pos}: bad JSON: "
                             f"{e.msg}") from None

    def symbol(self, node):
        v = self._json(node)
        if not isinstance(v, dict):
            self.err(node.children[0], ".symbol needs a JSON object")
        for k in ("name", "kind", "addr", "shape", "dtype"):
            if k not in v:
                self.err(node.children[0], f".symbol entry lacks key {k!r}")
        self.symbols.append(v)
        self.sym_toks.append(node.children[0])

    def meta(self, node):
        v = self._json(node)
        if not isinstance(v, dict):
            self.err(node.children[0], ".meta needs a JSON object")
        self._once(node, v)

    # -- whole file -------------------------------------------------------------------
    def finish(self, text: str) -> bytes:
        line, col = _end_pos(text)
        for key in ("target", "ddr_size", "data_size"):
            if key not in self.once:
                raise EdgecError(f"{self.path}:{line}:{col}: missing .{key} directive")
        size = self.once["data_size"][0]
        image = bytearray(size)
        end, end_tok = 0, None
        for addr, b, tok in sorted(self.chunks, key=lambda d: d[0]):
            if addr < end:
                self.err(tok, f".data at 0x{addr:x} overlaps the .data line on line "
                         f"{end_tok.line} (which ends at 0x{end:x})")
            if addr + len(b) > size:
                self.err(tok, f".data at 0x{addr:x} ({len(b)} bytes) runs past .data_size "
                         f"{size}")
            image[addr:addr + len(b)] = b
            end, end_tok = addr + len(b), tok
        meta = self.once.get("meta", ({}, None))[0]
        p = Program(self.once["target"][0], b"".join(self.code), bytes(image),
                    self.once["ddr_size"][0], self.symbols, meta)
        try:
            blob = write_program(p)
            read_program(blob, self.path)  # the container's own checks (symbols inside DDR...)
        except (EdgecError, ValueError, OverflowError, struct.error) as e:
            msg = str(e)
            if msg.startswith(self.path + ": "):
                msg = msg[len(self.path) + 2:]
            raise EdgecError(f"{self._where(msg, line, col)}: {msg}") from None
        return blob

    def _where(self, msg: str, line: int, col: int) -> str:
        """The directive a container-level complaint is about (else the end of the file)."""
        tok = None
        m = re.match(r"symbol (?:table entry (\d+)|'((?:[^'\\]|\\.)*)')", msg)
        if m and m.group(1) is not None and int(m.group(1)) < len(self.sym_toks):
            tok = self.sym_toks[int(m.group(1))]
        elif m and m.group(2) is not None:
            tok = next((t for s, t in zip(self.symbols, self.sym_toks)
                        if repr(s.get("name")) == f"'{m.group(2)}'"), None)
        elif msg.startswith("meta"):
            tok = self.once.get("meta", (None, None))[1]
        elif "DDR" in msg or "data section" in msg:
            tok = self.once["ddr_size"][1]
        elif "fingerprint" in msg:
            tok = self.once["target"][1]
        return self.at(tok) if tok is not None and hasattr(tok, "line") else \
            f"{self.path}:{line}:{col}"


def assemble(text: str, path: str = "<asm>") -> bytes:
    """prog.bin bytes for assembly `text` (reported as `path` in errors)."""
    tree = _parse(text, path)
    a = _Asm(path)
    for node in tree.children:
        getattr(a, node.data)(node)
    return a.finish(text)


def assemble_file(path: str) -> bytes:
    return assemble(read_source(path, "assembly"), path)
