"""prog.bin: the self-contained program container (format version 2).

Layout (all integers little-endian):

    offset 0   header, HEADER_BYTES bytes:
               magic b"EDGECPB\\0", u16 version, u16 word bytes, 8-byte target fingerprint,
               u32 DDR size, then for each of the five sections in file order its u64
               length and its 32-byte SHA-256 digest; zero padding to HEADER_BYTES
    head       UTF-8 JSON, keys sorted: {"meta": {"mask": ..., "remask": ...},
               "symbols": [the channel index tables, kind "table"]}
    tables     the DDR image from address 0 to the end of the last index table (the
               compiler places the tables first: compiler/backend/memory.py)
    code       instruction words, WORD_BYTES bytes each
    data       the rest of the initial DDR image (weights, masters, constants); tables +
               data are loaded at DDR address 0, the rest of DDR starts as zeros
    symbols    UTF-8 JSON, keys sorted: {"meta": {the other entries}, "symbols": [{name,
               kind, addr, shape, dtype, exp, ...}, the other symbols]}
    trailer    SHA-256 of the header (32 bytes)

The checksum covers every byte (the design's "a checksum covers the file"): the trailer
covers the header, which holds each section's digest.  A loader (read_program) checks
the trailer and then every section against its digest, naming the section that does not
match.  Program.data, the initial DDR image, is the tables section followed by the data
section.

Why sections: the bytes that depend on WHICH channels the user's mask keeps (the index
tables ``tab:<layer>`` and the meta entry ``mask``) are the head and tables sections, a
few kilobytes at the front of the file.  ``edgec remask`` (read_head, write_with_head)
reads and verifies the header and those two sections only, writes them anew and copies
code, data and symbols unchanged, digests included, without reading them into Python or
hashing them again.  So remask costs the same for a 100 KB and a 100 MB program, and it
does not launder damage: a corrupted byte in a copied section keeps its stale digest,
and loading the remasked program fails with the checksum error naming that section.

Program.symbols lists the head's symbols first, then the others; Program.meta is the
union of the two meta objects.  Nothing in the file is executed or unpickled when it is
loaded; the same Program always gives the same bytes.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field

from .errors import EdgecError
from .table import WORD_BYTES

MAGIC = b"EDGECPB\0"
VERSION = 2
SECTIONS = ("head", "tables", "code", "data", "symbols")
HEAD_META = ("mask", "remask")       # the meta entries that live in the head section
HEAD_KIND = "table"                  # the symbols that live there
_FIXED = struct.Struct("<8sHH8sI")
_ENTRY = struct.Struct("<Q32s")
HEADER_BYTES = 256
DIGEST_BYTES = 32
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


@dataclass
class Head:
    """What read_head reads of a program file: its header fields, the head section
    (meta entries and table symbols) and the tables section."""
    target_fp: bytes
    ddr_size: int
    lengths: list[int]
    digests: list[bytes]
    meta: dict
    symbols: list[dict]
    tables: bytes


def _json(meta: dict, symbols: list) -> bytes:
    return json.dumps({"meta": meta, "symbols": symbols}, sort_keys=True,
                      separators=(",", ":")).encode()


def _head_json(meta: dict, symbols: list) -> bytes:
    return _json(_split(meta)[0], [s for s in symbols if _in_head(s)])


def _split(meta) -> tuple[dict, dict]:
    """(the head's meta entries, the others); a meta that is no dict goes whole to the
    symbols section (where the loader refuses it)."""
    if not isinstance(meta, dict):
        return {}, meta
    return ({k: v for k, v in meta.items() if k in HEAD_META},
            {k: v for k, v in meta.items() if k not in HEAD_META})


def _in_head(s) -> bool:
    return isinstance(s, dict) and s.get("kind") == HEAD_KIND


def _table_end(symbols: list, data_len: int) -> int:
    """Where the tables section ends: after the last well-formed table symbol that starts
    inside the data section (0 if none)."""
    end = 0
    for s in symbols:
        if _in_head(s) and _is_int(s.get("addr")) and s.get("dtype") in DTYPE_BYTES \
                and isinstance(s.get("shape"), list) and all(map(_is_int, s["shape"])):
            n = DTYPE_BYTES[s["dtype"]]
            for d in s["shape"]:
                n *= d
            if 0 <= s["addr"] < data_len:
                end = max(end, s["addr"] + max(n, 0))
    return min(end, data_len)


def _seal(fp: bytes, ddr_size: int, lengths, digests) -> tuple[bytes, bytes]:
    """(header, trailer) for sections of these lengths and digests."""
    hdr = _FIXED.pack(MAGIC, VERSION, WORD_BYTES, fp, ddr_size) + b"".join(
        _ENTRY.pack(n, d) for n, d in zip(lengths, digests))
    hdr = hdr.ljust(HEADER_BYTES, b"\0")
    return hdr, hashlib.sha256(hdr).digest()


def write_program(p: Program) -> bytes:
    t = _table_end(p.symbols, len(p.data))
    rest = [s for s in p.symbols if not _in_head(s)]
    sections = [_head_json(p.meta, p.symbols), p.data[:t], p.code, p.data[t:],
                _json(_split(p.meta)[1], rest)]
    hdr, trailer = _seal(p.target_fp, p.ddr_size, [len(s) for s in sections],
                         [hashlib.sha256(s).digest() for s in sections])
    return b"".join([hdr, *sections, trailer])


def reseal(body: bytes) -> bytes:
    """``body`` (a program file without its trailer, perhaps edited) with every section
    digest and the trailer recomputed from the lengths in its header, as far as they fit:
    for tests and the fuzzer, so that an edit reaches the checks behind the checksum."""
    b = bytearray(body)
    if len(b) < HEADER_BYTES:
        return bytes(b) + hashlib.sha256(bytes(b)).digest()
    off = HEADER_BYTES
    for k in range(len(SECTIONS)):
        at = _FIXED.size + k * _ENTRY.size
        n, _ = _ENTRY.unpack_from(b, at)
        _ENTRY.pack_into(b, at, n, hashlib.sha256(b[off:off + n]).digest())
        off += n
    return bytes(b) + hashlib.sha256(b[:HEADER_BYTES]).digest()


def _header(hdr: bytes, trailer: bytes, size: int, bad, expect_target: bytes | None):
    """Check the header of a ``size``-byte file against its trailer: (target fingerprint,
    DDR size, section lengths, section digests)."""
    if size < HEADER_BYTES + DIGEST_BYTES:
        bad(f"too short ({size} bytes) to be an edgec program")
    magic, ver, wbytes, fp, ddr_size = _FIXED.unpack_from(hdr)
    if magic != MAGIC:
        bad("not an edgec program (bad magic)")
    if ver != VERSION:
        bad(f"format version {ver}, this edgec reads version {VERSION}; recompile")
    entries = [_ENTRY.unpack_from(hdr, _FIXED.size + k * _ENTRY.size)
               for k in range(len(SECTIONS))]
    lengths, digests = [n for n, _ in entries], [d for _, d in entries]
    if HEADER_BYTES + sum(lengths) + DIGEST_BYTES != size:
        bad(f"section lengths ({' + '.join(map(str, lengths))} bytes) do not add up to the "
            f"file size ({size} bytes): the file is truncated or corrupted")
    if hashlib.sha256(hdr).digest() != trailer:
        bad("checksum mismatch in the header: the file is corrupted")
    if wbytes != WORD_BYTES:
        bad(f"instruction words of {wbytes} bytes, expected {WORD_BYTES}")
    if lengths[2] % WORD_BYTES:
        bad(f"code section of {lengths[2]} bytes is not a whole number of "
            f"{WORD_BYTES}-byte instruction words")
    if lengths[1] + lengths[3] > ddr_size:
        bad(f"data section ({lengths[1] + lengths[3]} bytes) larger than its DDR size "
            f"({ddr_size})")
    if expect_target is not None and fp != expect_target:
        bad(f"compiled for target fingerprint {fp.hex()}, not {expect_target.hex()}; "
            "pass the --target it was compiled for")
    return fp, ddr_size, lengths, digests


def _verify(k: int, raw, digest: bytes, bad) -> None:
    if hashlib.sha256(raw).digest() != digest:
        bad(f"checksum mismatch in section {SECTIONS[k]!r}: the file is corrupted")


def _doc(k: int, raw, bad, ddr_size: int, first: int = 0):
    """The (meta, symbols) of JSON section k, checked; symbol entries numbered from
    ``first``."""
    try:
        doc = json.loads(bytes(raw).decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # malformed JSON
        bad(f"malformed {SECTIONS[k]} section ({type(e).__name__}: {e})")
    if not (isinstance(doc, dict) and isinstance(doc.get("symbols"), list)
            and isinstance(doc.get("meta"), dict)):
        bad(f"malformed {SECTIONS[k]} section (expected an object with a 'symbols' list "
            "and a 'meta' object)")
    head = k == 0
    for j, s in enumerate(doc["symbols"]):
        _check_symbol(bad, first + j, s, ddr_size)
        if _in_head(s) != head:
            bad(f"symbol {s['name']!r} of kind {s['kind']!r} belongs in the "
                f"{'symbols' if head else 'head'} section")
    for key in doc["meta"]:
        if (key in HEAD_META) != head:
            bad(f"meta entry {key!r} belongs in the {'symbols' if head else 'head'} section")
    return doc["meta"], doc["symbols"]


def read_program(blob: bytes, path: str = "prog.bin",
                 expect_target: bytes | None = None) -> Program:
    """Parse and validate a container; every defect is an EdgecError naming `path`."""
    def bad(msg: str):
        raise EdgecError(f"{path}: {msg}")
    view = memoryview(blob)
    fp, ddr_size, lengths, digests = _header(
        bytes(view[:HEADER_BYTES]), bytes(view[-DIGEST_BYTES:]), len(blob), bad,
        expect_target)
    parts, off = [], HEADER_BYTES
    for k, n in enumerate(lengths):
        parts.append(view[off:off + n])
        _verify(k, parts[k], digests[k], bad)
        off += n
    head_meta, head_syms = _doc(0, parts[0], bad, ddr_size)
    meta, symbols = _doc(4, parts[4], bad, ddr_size, len(head_syms))
    meta.update(head_meta)
    _check_meta(bad, meta)
    return Program(fp, bytes(parts[2]), b"".join(parts[1:4:2]), ddr_size,
                   head_syms + symbols, meta)


def read_head(f, path: str) -> Head:
    """The header, head and tables sections of the open program file ``f``, checked
    (trailer, their digests, the table symbols) without reading the other sections."""
    def bad(msg: str):
        raise EdgecError(f"{path}: {msg}")
    size = os.fstat(f.fileno()).st_size
    hdr = f.read(HEADER_BYTES)
    f.seek(max(size - DIGEST_BYTES, 0))
    fp, ddr_size, lengths, digests = _header(hdr, f.read(DIGEST_BYTES), size, bad, None)
    f.seek(HEADER_BYTES)
    head, tables = f.read(lengths[0]), f.read(lengths[1])
    _verify(0, head, digests[0], bad)
    _verify(1, tables, digests[1], bad)
    meta, symbols = _doc(0, head, bad, ddr_size)
    return Head(fp, ddr_size, lengths, digests, meta, symbols, tables)


def write_with_head(out, h: Head, meta: dict, tables: bytes, src) -> None:
    """Write to the binary file ``out`` the program of the open file ``src`` (whose head
    is ``h``) with the head section's meta entries and the tables section replaced (the
    same symbols, the same length): the header and the two sections anew, then code, data
    and symbols copied from ``src`` byte for byte with their recorded digests, in the
    kernel where it can (copy_file_range), then the trailer."""
    if len(tables) != h.lengths[1]:
        raise ValueError("the tables section must keep its length")
    head = _head_json(meta, h.symbols)
    lengths = [len(head), len(tables), *h.lengths[2:]]
    digests = [hashlib.sha256(head).digest(), hashlib.sha256(tables).digest(),
               *h.digests[2:]]
    hdr, trailer = _seal(h.target_fp, h.ddr_size, lengths, digests)
    out.write(hdr + head + tables)
    out.flush()
    _copy(src, HEADER_BYTES + h.lengths[0] + h.lengths[1], sum(h.lengths[2:]), out)
    out.write(trailer)


def _copy(src, offset: int, count: int, out) -> None:
    """``count`` bytes of ``src`` from ``offset`` appended to ``out`` (flushed)."""
    i, o = src.fileno(), out.fileno()
    try:
        while count:
            n = os.copy_file_range(i, o, count, offset)
            if n == 0:
                raise EdgecError(f"{getattr(src, 'name', 'program')}: shorter than its "
                                 "header says")
            offset, count = offset + n, count - n
        return
    except (AttributeError, OSError):   # no copy_file_range here: copy through Python
        pass
    src.seek(offset)
    while count:
        chunk = src.read(min(count, 1 << 24))
        if not chunk:
            raise EdgecError(f"{getattr(src, 'name', 'program')}: shorter than its header "
                             "says")
        out.write(chunk)
        count -= len(chunk)


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
    if not blob.startswith(MAGIC):
        from .filekind import PROGRAM, check_kind
        check_kind(path, "a prog.bin written by edgec compile", (PROGRAM,))
    return read_program(blob, path, expect_target)
