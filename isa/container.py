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


def write_program(p: Program) -> bytes:
    sym = json.dumps({"meta": p.meta, "symbols": p.symbols}, sort_keys=True,
                     separators=(",", ":")).encode()
    code_off = HEADER_BYTES
    data_off = code_off + len(p.code)
    sym_off = data_off + len(p.data)
    hdr = _HDR.pack(MAGIC, VERSION, WORD_BYTES, p.target_fp, p.n_instr, code_off, data_off,
                    len(p.data), sym_off, len(sym), p.ddr_size, 0)
    body = hdr.ljust(HEADER_BYTES, b"\0") + p.code + p.data + sym
    return body + hashlib.sha256(body).digest()


def read_program(blob: bytes, path: str = "prog.bin",
                 expect_target: bytes | None = None) -> Program:
    """Parse and validate a container; every defect is an EdgecError naming `path`."""
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
    if hashlib.sha256(blob[:-32]).digest() != blob[-32:]:
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
        symbols, meta = doc["symbols"], doc["meta"]
        for s in symbols:
            nbytes = DTYPE_BYTES[s["dtype"]]
            for d in s["shape"]:
                nbytes *= int(d)
            if not (0 <= int(s["addr"]) and int(s["addr"]) + nbytes <= ddr_size):
                bad(f"symbol {s['name']!r} lies outside DDR")
    except EdgecError:
        raise
    except Exception as e:  # malformed JSON or missing keys
        bad(f"malformed symbol table ({type(e).__name__}: {e})")
    return Program(fp, blob[code_off:data_off], blob[data_off:data_off + data_len],
                   ddr_size, symbols, meta)


def load_program(path: str, expect_target: bytes | None = None) -> Program:
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as e:
        raise EdgecError(f"{path}: cannot read ({e.strerror})") from None
    return read_program(blob, path, expect_target)
