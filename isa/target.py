"""Target machine description (a TOML file) and its fingerprint; the bundled targets
(isa/targets/*.toml, named by their file stem: ``default``, ``edge-dpu-16x16-2g``)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import EdgecError

BUNDLED = Path(__file__).with_name("targets")
DEFAULT_TARGET = BUNDLED / "default.toml"

_SCHEMA = {
    ("target", "name"): str,
    ("mac", "rows"): int, ("mac", "cols"): int,
    ("buffers", "ibuf"): int, ("buffers", "wbuf"): int, ("buffers", "abuf"): int,
    ("ddr", "bytes"): int, ("ddr", "bytes_per_cycle"): int, ("ddr", "latency"): int,
    ("vector", "lanes"): int,
}


@dataclass(frozen=True)
class Target:
    name: str
    mac_rows: int
    mac_cols: int
    ibuf: int
    wbuf: int
    abuf: int
    ddr_bytes: int
    ddr_bytes_per_cycle: int
    ddr_latency: int
    vector_lanes: int

    def mac_group_passes(self, a: int, b: int, g: int) -> int:
        """Array passes per output pixel and kernel tap of a MAC whose groups each reduce
        `a` lanes into `b` lanes: groups small enough are packed side by side on the array
        (block-diagonal weights), min(rows // a, cols // b) of them per pass."""
        per = max(1, min(self.mac_rows // a, self.mac_cols // b))
        return -(-g // per) * -(-a // self.mac_rows) * -(-b // self.mac_cols)

    def buffer_size(self, buf: str) -> int:
        return {"IBUF": self.ibuf, "WBUF": self.wbuf, "ABUF": self.abuf}[buf]

    @property
    def fingerprint(self) -> bytes:
        blob = json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).digest()[:8]


def bundled_targets() -> dict[str, Path]:
    """{name: TOML path} of the targets shipped in isa/targets (name = file stem)."""
    return {p.stem: p for p in sorted(BUNDLED.glob("*.toml"))}


def load_target(path: str | Path | None = None) -> Target:
    """The target of a TOML file, or of a bundled target's name (``--target
    edge-dpu-16x16-2g``) where no such file exists; None: the default target."""
    if path and not os.path.exists(path) and str(path) in bundled_targets():
        path = bundled_targets()[str(path)]
    path = Path(path) if path else DEFAULT_TARGET
    if path.is_file():
        from .filekind import BINARY, TOML, check_kind
        check_kind(str(path), "a target TOML file", (TOML, BINARY))   # binary: the byte
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise EdgecError(f"{path}: cannot read target file ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise EdgecError(f"{path}: not a UTF-8 text (TOML) file (byte {e.start}: "
                         f"{e.reason})") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise EdgecError(f"{path}: {e}") from None
    vals = {}
    for (sec, key), typ in _SCHEMA.items():
        v = doc.get(sec, {}).get(key) if isinstance(doc.get(sec), dict) else None
        if v is None:
            raise EdgecError(f"{path}: missing [{sec}] {key}")
        if not isinstance(v, typ) or isinstance(v, bool):
            raise EdgecError(f"{path}: [{sec}] {key} must be {typ.__name__}, got {v!r}")
        if typ is int and not 0 < v < 2**40:
            raise EdgecError(f"{path}: [{sec}] {key} = {v} is out of range")
        vals[f"{sec}.{key}"] = v
    for b, lim in (("ibuf", 1 << 20), ("wbuf", 1 << 20), ("abuf", 1 << 20)):
        if vals[f"buffers.{b}"] > lim:
            raise EdgecError(f"{path}: [buffers] {b} = {vals['buffers.' + b]} exceeds the "
                             f"20-bit buffer address space ({lim} elements)")
    if vals["ddr.bytes"] > 1 << 32:
        raise EdgecError(f"{path}: [ddr] bytes exceeds the 32-bit address space")
    return Target(vals["target.name"], vals["mac.rows"], vals["mac.cols"],
                  vals["buffers.ibuf"], vals["buffers.wbuf"], vals["buffers.abuf"],
                  vals["ddr.bytes"], vals["ddr.bytes_per_cycle"], vals["ddr.latency"],
                  vals["vector.lanes"])


def bundled_by_fingerprint() -> dict[bytes, tuple[str, Path]]:
    """fingerprint -> (name, file) of the targets shipped in isa/targets/."""
    global _BUNDLED
    if _BUNDLED is None:
        _BUNDLED = {}
        for p in bundled_targets().values():
            t = load_target(p)
            _BUNDLED[t.fingerprint] = (t.name, p)
    return _BUNDLED


_BUNDLED: dict | None = None


def recorded_name(target: Target) -> str | None:
    """The target name a program records in its meta ("target"): None for a bundled
    target (its fingerprint names it)."""
    return None if target.fingerprint in bundled_by_fingerprint() else target.name


def mismatch(program, target: Target) -> str:
    """Why `program` cannot run on `target`, and which --target to pass: the program's
    target is named by its meta "target" (or, for a bundled target, its fingerprint)."""
    fp = bytes(program.target_fp)
    name, path = bundled_by_fingerprint().get(fp, (program.meta.get("target"), None))
    if not isinstance(name, str):
        name = None
    have = (f"target {name!r} (fingerprint {fp.hex()})" if name
            else f"target fingerprint {fp.hex()}")
    if path == DEFAULT_TARGET:
        fix = "run it without --target (it is the default target)"
    elif path is not None:
        fix = f"run it without --target or pass --target {path.stem}"
    elif name:
        fix = f"pass --target with the TOML file of target {name!r}"
    else:
        fix = "pass --target with the TOML file it was compiled with"
    here = bundled_by_fingerprint().get(target.fingerprint, (None, None))[1] == DEFAULT_TARGET
    return (f"program compiled for {have}, but the target here is {target.name!r} "
            f"(fingerprint {target.fingerprint.hex()}"
            f"{', the default: no --target' if here else ''}): "
            f"{fix}, or recompile it for {target.name!r}")


def target_of_program(fp: bytes, path: str | Path | None = None) -> Target:
    """The target to run a program on: `path` (a TOML file or bundled name) if given, else
    the bundled target whose fingerprint the program carries, else the default."""
    if path:
        return load_target(path)
    bundled = bundled_by_fingerprint().get(bytes(fp))
    return load_target(bundled[1] if bundled else None)


def _mib(n: int) -> str:
    """Bytes for people: 256 MiB, 341.9 MiB, 2 GiB, 76.4 KiB."""
    for unit, name in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= unit:
            v = n / unit
            return f"{v:.0f} {name}" if v == int(v) else f"{v:.1f} {name}"
    return f"{n} B"


def ddr_error(tg: Target, need: int) -> EdgecError:
    """A program of `need` DDR bytes does not fit target `tg`: what it needs, what the
    target has, and the fix (the smallest bundled target that is `tg` with more DDR, or
    a larger [ddr] bytes in the target file)."""
    same = lambda t: dataclasses.replace(t, name="", ddr_bytes=0)      # noqa: E731
    fits = sorted((t.ddr_bytes, name) for name, t in
                  ((n, load_target(p)) for n, p in bundled_targets().items())
                  if same(t) == same(tg) and t.ddr_bytes >= need)
    fix = (f"compile with --target {fits[0][1]} (the same machine with "
           f"{_mib(fits[0][0])} of DDR)" if fits else
           "compile with --target FILE.toml whose [ddr] bytes holds it (at most 4 GiB: "
           "32-bit DDR addresses), or mask more channels / use a smaller batch")
    return EdgecError(f"the program needs {need:,} bytes ({_mib(need)}) of DDR, but target "
                      f"{tg.name!r} has {tg.ddr_bytes:,} ({_mib(tg.ddr_bytes)}); {fix}")
