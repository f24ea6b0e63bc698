"""prog.bin: the self-contained program container.

Layout (all integers little-endian):

    offset 0   header, HEADER_BYTES bytes:
               magic b"EDGECPB\\0", u16 version, u16 word bytes, 8-byte target fingerprint,
               u32 instruction count, u32 code offset, u32 data offset, u32 data length,
               u32 symbol-table offset, u32 symbol-table length, u32 DDR size, u32 flags,
               zero padding to HEADER_BYTES
    code       instruction count * WORD_BYTES bytes
    data       initial DDR image, loaded at DDR address 0 (weights, masters, channel
               index tables, constants); the rest of DDR starts as zeros
    symbols    UTF-8 JSON, keys sorted: {"meta": {...}, "symbols": [{name, kind, addr,
               shape, dtype, exp, ...}, ...]}
    trailer    SHA-256 of every byte before it (32 bytes)

Nothing in the file is executed or unpickled when it is loaded.
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field

from .errors import EdgecError
from .table import WORD_BYTES

MAGIC = b"EDGECPB\0"
VERSION = 1
HEADER_BYTES = 64
_HDR = struct.Struct("<8sHH8sIIIIIIII")
DTYPE_BYTES = {"i8": 1, "i32": 4}


@dataclass
class Program:
    target_fp: bytes
    code: bytes
    data: bytes
    ddr_size: int
    symbols: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def n_instr(self) -> int:
        return len(self.code) // WORD_BYTES

    def symbol(self, name: str) -> dict:
        for s in self.symbols:
            if s["name"] == name:
                return s
        raise EdgecError(f"program has no symbol {name!r}")


def _symbol_json(meta: dict, symbols: list[dict]) -> bytes:
    return json.dumps({"meta": meta, "symbols": symbols}, sort_keys=True,
                      separators=(",", ":")).encode()


def _header(fp: bytes, n: int, data_len: int, sym_len: int, ddr_size: int) -> bytes:
    code_off = HEADER_BYTES
    data_off = code_off + n * WORD_BYTES
    return _HDR.pack(MAGIC, VERSION, WORD_BYTES, fp, n, code_off, data_off, data_len,
                     data_off + data_len, sym_len, ddr_size, 0).ljust(HEADER_BYTES, b"\0")


def write_program(p: Program) -> bytes:
    sym = _symbol_json(p.meta, p.symbols)
    body = _header(p.target_fp, p.n_instr, len(p.data), len(sym), p.ddr_size) + p.code \
        + p.data + sym
    return body + hashlib.sha256(body).digest()


def rewrite_program(blob: bytes, data_patches: dict[int, bytes], meta: dict,
                    symbols: list[dict], path: str = "prog.bin") -> bytearray:
    """``blob`` (a container that passed read_sections, with those ``symbols``) with
    data-section bytes replaced (data offset -> bytes) and a new meta: the bytes
    write_program gives for the changed Program, without splitting the sections apart
    (one copy of a large program, not four)."""
    _, _, _, fp, n, _, _, data_len, _, _, ddr_size, _ = _HDR.unpack_from(blob)
    data_off = HEADER_BYTES + n * WORD_BYTES
    sym = _symbol_json(meta, symbols)
    out = bytearray(memoryview(blob)[:data_off + data_len])
    out[:HEADER_BYTES] = _header(fp, n, data_len, len(sym), ddr_size)
    for off, raw in data_patches.items():
        if not 0 <= off <= off + len(raw) <= data_len:
            raise EdgecError(f"{path}: patch at data offset {off} outside the data section")
        out[data_off + off:data_off + off + len(raw)] = raw
    out += sym
    out += hashlib.sha256(out).digest()
    return out


def read_program(blob: bytes, path: str = "prog.bin",
                 expect_target: bytes | None = None) -> Program:
    """Parse and validate a container; every defect is an EdgecError naming `path`."""
    fp, n, data_len, ddr_size, symbols, meta = read_sections(blob, path, expect_target)
    data_off = HEADER_BYTES + n * WORD_BYTES
    return Program(fp, blob[HEADER_BYTES:data_off], blob[data_off:data_off + data_len],
                   ddr_size, symbols, meta)


def read_sections(blob: bytes, path: str = "prog.bin", expect_target: bytes | None = None):
    """Validate a container; (target fingerprint, instruction count, data length, DDR size,
    symbols, meta), without copying its code and data sections."""
    def bad(msg: str):
        raise EdgecError(f"{path}: {msg}")
    if len(blob) < HEADER_BYTES + 32:
        bad(f"too short ({len(blob)} bytes) to be an edgec program")
    if blob[:8] != MAGIC:
        bad("not an edgec program (bad magic)")
    (_, ver, wbytes, fp, n, code_off, data_off, data_len, sym_off, sym_len, ddr_size,
     _flags) = _HDR.unpack_from(blob)
    if ver != VERSION:
        bad(f"format version {ver}, this edgec reads version {VERSION}; recompile")
    if hashlib.sha256(memoryview(blob)[:-32]).digest() != blob[-32:]:
        bad("checksum mismatch: the file is corrupted or truncated")
    if wbytes != WORD_BYTES:
        bad(f"instruction words of {wbytes} bytes, expected {WORD_BYTES}")
    end = len(blob) - 32
    if not (code_off == HEADER_BYTES and data_off == code_off + n * WORD_BYTES
            and sym_off == data_off + data_len and sym_off + sym_len == end):
        bad("section offsets are inconsistent")
    if data_len > ddr_size:
        bad(f"data section ({data_len} bytes) larger than its DDR size ({ddr_size})")
    if expect_target is not None and fp != expect_target:
        bad(f"compiled for target fingerprint {fp.hex()}, not {expect_target.hex()}; "
            "recompile with --target")
    try:
        doc = json.loads(blob[sym_off:sym_off + sym_len].decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # malformed JSON
        bad(f"malformed symbol table ({type(e).__name__}: {e})")
    if not (isinstance(doc, dict) and isinstance(doc.get("symbols"), list)
            and isinstance(doc.get("meta"), dict)):
        bad("malformed symbol table (expected an object with a 'symbols' list and a "
            "'meta' object)")
    symbols, meta = doc["symbols"], doc["meta"]
    for k, s in enumerate(symbols):
        _check_symbol(bad, k, s, ddr_size)
    _check_meta(bad, meta)
    return fp, n, data_len, ddr_size, symbols, meta


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_symbol(bad, k: int, s, ddr_size: int) -> None:
    """Types and bounds of one symbol-table entry (everything a host or disassembler reads)."""
    if not isinstance(s, dict):
        bad(f"symbol table entry {k} is not an object")
    name = s.get("name")
    if not isinstance(name, str):
        bad(f"symbol table entry {k} has no string 'name'")
    what = f"symbol {name!r}"
    if not isinstance(s.get("kind"), str):
        bad(f"{what}: 'kind' must be a string")
    if not isinstance(s.get("dtype"), str) or s["dtype"] not in DTYPE_BYTES:
        bad(f"{what}: dtype {s.get('dtype')!r} is not one of {', '.join(DTYPE_BYTES)}")
    shape = s.get("shape")
    if not (isinstance(shape, list) and len(shape) <= 8
            and all(_is_int(d) and 0 <= d < 2**32 for d in shape)):
        bad(f"{what}: shape {shape!r} is not a list of non-negative integers")
    addr = s.get("addr")
    if not _is_int(addr):
        bad(f"{what}: address {addr!r} is not an integer")
    exp = s.get("exp")
    if exp is not None and not (_is_int(exp) and -1000 <= exp <= 1000):
        bad(f"{what}: exponent {exp!r} is not an integer in [-1000, 1000]")
    nbytes = DTYPE_BYTES[s["dtype"]]
    for d in shape:
        nbytes *= d
    if not (0 <= addr and addr + nbytes <= ddr_size):
        bad(f"{what} lies outside DDR")


def _check_meta(bad, meta: dict) -> None:
    """Types of the meta entries the host reads (logits, params)."""
    if "logits" in meta and not isinstance(meta["logits"], str):
        bad(f"meta 'logits' must be a symbol name, got {meta['logits']!r}")
    params = meta.get("params", [])
    if not isinstance(params, list):
        bad("meta 'params' must be a list")
    for k, p in enumerate(params):
        if not (isinstance(p, dict) and isinstance(p.get("name"), str)
                and isinstance(p.get("master"), str)):
            bad(f"meta params[{k}] must be an object with string 'name' and 'master'")
        shape = p.get("shape")
        if not (isinstance(shape, list) and all(_is_int(d) and 0 <= d < 2**32 for d in shape)):
            bad(f"meta params[{k}] ({p['name']!r}): shape {shape!r} is not a list of "
                "non-negative integers")
        for key in ("grad", "out_tab", "in_tab", "param"):
            if p.get(key) is not None and not isinstance(p[key], str):
                bad(f"meta params[{k}] ({p['name']!r}): {key!r} must be a symbol name or null")
        blk = p.get("in_block", 1)
        if blk is not None and not (_is_int(blk) and 0 <= blk < 2**32):
            bad(f"meta params[{k}] ({p['name']!r}): in_block {blk!r} is not a non-negative "
                "integer")


def load_program(path: str, expect_target: bytes | None = None) -> Program:
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as e:
        raise EdgecError(f"{path}: cannot read ({e.strerror})") from None
    return read_program(blob, path, expect_target)
