"""Robustness fuzzer (issue 7): bad input never crashes edgec, never hangs, never damages
an existing output file, and always fails with a located edgec error.

    python benchmarks/fuzz.py --cases 10000 --json fuzz.json [--seed 0] [--only N]

Compiles examples/lenet once, then mutates its inputs case by case:

    prog      prog.bin bytes: bit flips, truncations, splices, header fields (half of the
              cases with a recomputed checksum so the structural checks are reached)
    prog-st   prog.bin rebuilt with write_program after tampering the Program: field-level
              instruction word mutations, random words, reordered/deleted words, symbol
              table and meta damage, DDR size, data section
    mask      user.mask text through parse_mask (lenet's layers)
    target    target TOML through load_target (and, when it loads, the lenet program
              re-stamped for that target through the emulator)
    batch     batch.npz through `edgec run` in-process (cli.main), with an existing out.npz
              that must survive every failed run byte for byte
    asm, ir, onnx, model
              assembly, IR dumps, ONNX files and model.py text, line/field mutations
    argv      whole command lines through cli.main: every subcommand with files of the
              wrong kind (a prog.bin where a model is expected, a mask as a model, a
              directory, a missing file, ...), misspelt options, bad option values and
              stray arguments; an existing output must survive every failed run

Outcomes: ok / clean-error (EdgecError with a located message) / bad-message (EdgecError
whose message does not say where) / traceback (any other exception) / hang (over
--time-limit seconds) / damaged-output.  Case i is reproducible alone with --only i (same
--seed); failing inputs are saved under --save.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import random
import re
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
LENET = ROOT / "examples" / "lenet"
KINDS = ("prog", "prog-st", "mask", "target", "batch", "asm", "ir", "onnx", "model", "argv")
# relative share of each kind in the mix (model.py executes Python: keep it rare)
WEIGHTS = {"prog": 3, "prog-st": 3, "mask": 2, "target": 2, "batch": 2, "asm": 3, "ir": 3,
           "onnx": 1, "model": 1, "argv": 2}
OUTCOMES = ("ok", "clean-error", "bad-message", "traceback", "hang", "damaged-output")


class Hang(BaseException):
    """Raised by the alarm handler (BaseException: user-level `except Exception` misses it)."""


def _alarm(signum, frame):
    raise Hang()


# ---------------------------------------------------------------------------- base inputs

class Base:
    def __init__(self, work: Path):
        from edgec.compiler.driver import compile_model
        from edgec.compiler.mask.layers import mask_layers
        from edgec.isa.target import DEFAULT_TARGET, load_target
        c = compile_model(str(LENET / "model.py"), str(LENET / "user.mask"))
        self.blob = c.blob
        self.program = c.program
        self.target = load_target()
        self.layers = mask_layers(c.model)[0]
        self.logits_layer = c.graph.producer(c.graph.outputs["logits"]).layer
        self.mask_text = (LENET / "user.mask").read_text()
        self.toml_text = Path(DEFAULT_TARGET).read_text()
        sys.path.insert(0, str(LENET))
        from data import digits
        x, y = digits()
        self.x = x[1300:1316].astype(np.float32)
        self.y = y[1300:1316].astype(np.int64)
        self.work = work
        self.prog_path = work / "prog.bin"
        self.prog_path.write_bytes(self.blob)
        self.batch_path = work / "batch.npz"
        np.savez(self.batch_path, x=self.x, y=self.y)
        self.out_path = work / "out.npz"
        self.out_bytes = b"previous out.npz: must survive every failed run\n" * 10
        from edgec.isa.disasm import disassemble
        self.asm_text = "\n".join(disassemble(self.program)) + "\n"
        compile_model(str(LENET / "model.py"), str(LENET / "user.mask"),
                      dump_ir=str(work / "dump"))
        self.ir = {f.name: f.read_text() for f in sorted((work / "dump").iterdir())}
        self.onnx = b""
        try:
            import torch
            from edgec.compiler.frontend.load import load_model
            model, ex = load_model(str(LENET / "model.py"))
            torch.onnx.export(model, (ex,), str(work / "lenet.onnx"), dynamo=False,
                              opset_version=13, input_names=["x"], output_names=["logits"])
            self.onnx = (work / "lenet.onnx").read_bytes()
            np.savez(work / "calib.npz", x=ex.numpy())
        except Exception as e:  # noqa: BLE001 - exporter unavailable: onnx cases skipped
            print(f"no base ONNX ({type(e).__name__}: {e}); onnx cases skipped", file=sys.stderr)
        self.model_dir = work / "model"
        self.model_dir.mkdir()
        for f in ("data.py", "lenet.pt"):
            (self.model_dir / f).write_bytes((LENET / f).read_bytes())
        self.model_text = (LENET / "model.py").read_text()


# ---------------------------------------------------------------------------- mutators

def _rehash(body: bytes) -> bytes:
    from edgec.isa.container import reseal
    return reseal(body)


def mutate_prog_bytes(rng: random.Random, blob: bytes) -> tuple[bytes, str]:
    from edgec.isa.container import HEADER_BYTES
    body = bytearray(blob[:-32])
    how = rng.choice(["flip", "flip", "trunc", "splice", "header", "bytes", "extend"])
    if how == "flip":
        for _ in range(rng.choice([1, 1, 2, 4, 16])):
            k = rng.randrange(len(body) * 8)
            body[k // 8] ^= 1 << (k % 8)
    elif how == "trunc":
        cut = rng.choice([rng.randrange(len(blob)), rng.randrange(HEADER_BYTES + 40)])
        return bytes(blob[:cut]), f"truncate to {cut}"   # raw: checksum not recomputed
    elif how == "splice":
        a, b = sorted(rng.randrange(len(body)) for _ in range(2))
        c = rng.randrange(len(body))
        chunk = body[a:b][:4096]
        if rng.random() < 0.5:
            body[c:c + len(chunk)] = chunk                  # overwrite (may extend)
        else:
            body[c:c] = chunk                               # insert
    elif how == "header":
        # header fields: version, word bytes, DDR size, the five section lengths
        off, width = rng.choice([(8, 2), (10, 2), (20, 4)] + [(24 + 40 * k, 8)
                                                             for k in range(5)])
        v = rng.choice([0, 1, 63, 64, 65, 2**width * 8 - 1, rng.randrange(2**(8 * width)),
                        int.from_bytes(body[off:off + width], "little") + rng.randint(-70, 70)])
        v %= 2**(8 * width)
        body[off:off + width] = v.to_bytes(width, "little")
    elif how == "bytes":
        k = rng.randrange(len(body))
        n = rng.choice([1, 4, 8, 64])
        body[k:k + n] = bytes(rng.randrange(256) for _ in range(n))
    else:
        body += bytes(rng.randrange(256) for _ in range(rng.choice([1, 32, 64, 100])))
    if rng.random() < 0.5:
        return _rehash(bytes(body)), f"{how} + valid checksum"
    return bytes(body) + blob[-32:], f"{how} (old checksum)"


_WEIRD = [None, True, -1, 0, 2**31, 2**64, 1.5, "x", "", [], {}, [1, 2], [-1], [2**40],
          ["a"], {"a": 1}, float("nan")]


def _weird(rng):
    return copy.deepcopy(rng.choice(_WEIRD))


def mutate_word(rng: random.Random, word: bytes, tg) -> tuple[bytes, str]:
    """Field-level mutation of one instruction word (valid encodings, odd values)."""
    from edgec.isa.encoding import decode, encode
    from edgec.isa.table import INSTRS, WORD_BYTES
    how = rng.choice(["field", "field", "field", "random", "opcode", "stray", "other"])
    if how == "random":
        return bytes(rng.randrange(256) for _ in range(WORD_BYTES)), "random word"
    if how == "opcode":
        return bytes([rng.randrange(256)]) + word[1:], "random opcode"
    if how == "stray":
        w = int.from_bytes(word, "little") | (1 << rng.randrange(200, WORD_BYTES * 8 - 1))
        return w.to_bytes(WORD_BYTES, "little"), "stray high bit"
    try:
        ins, vals = decode(word)
    except Exception:
        return word, "undecodable kept"
    if how == "other":                      # same fields, another instruction
        ins = rng.choice(INSTRS)
        known = {f.name for f in ins.fields}
        vals = {k: v for k, v in vals.items() if k in known}
    fields = ins.fields
    if not fields:
        return encode(ins.name, **vals), f"{ins.name} unchanged"
    notes = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        f = rng.choice(fields)
        top = (1 << f.bits) - 1
        lo = -(1 << (f.bits - 1)) if f.signed else 0
        hi = (1 << (f.bits - 1)) - 1 if f.signed else top
        sizes = [tg.ibuf, tg.wbuf, tg.abuf, tg.ddr_bytes, 2**20, 2**16]
        cands = [lo, hi, 0, 1, 2, 3, 255, rng.randint(lo, hi),
                 vals.get(f.name, 0) + rng.randint(-3, 3), vals.get(f.name, 0) * 2]
        cands += [s + d for s in sizes for d in (-1, 0, 1)]
        v = min(hi, max(lo, rng.choice(cands)))
        vals[f.name] = v
        notes.append(f"{f.name}={v}")
    dep = vals.pop("dep", 0)
    return encode(ins.name, dep=dep, **vals), f"{ins.name} " + " ".join(notes)


def mutate_program(rng: random.Random, base: Base) -> tuple[bytes, str]:
    from edgec.isa.container import Program, write_program
    from edgec.isa.table import WORD_BYTES
    p = base.program
    code = [p.code[i:i + WORD_BYTES] for i in range(0, len(p.code), WORD_BYTES)]
    symbols = copy.deepcopy(p.symbols)
    meta = copy.deepcopy(p.meta)
    data, ddr_size, fp = p.data, p.ddr_size, p.target_fp
    notes = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        how = rng.choice(["word"] * 8 + ["delete", "dup", "swap", "noend", "sym", "sym",
                                         "meta", "ddr", "data", "fp", "codebytes"])
        if not code:
            code = [b""]
        if how == "word":
            i = rng.randrange(len(code))
            code[i], n = mutate_word(rng, code[i], base.target)
            notes.append(f"word {i}: {n}")
        elif how == "delete" and len(code) > 1:
            i = rng.randrange(len(code))
            del code[i]
            notes.append(f"delete word {i}")
        elif how == "dup":
            i = rng.randrange(len(code))
            code.insert(rng.randrange(len(code)), code[i])
            notes.append(f"duplicate word {i}")
        elif how == "swap":
            i, j = rng.randrange(len(code)), rng.randrange(len(code))
            code[i], code[j] = code[j], code[i]
            notes.append(f"swap words {i},{j}")
        elif how == "noend":
            code = code[:-1]
            notes.append("drop END")
        elif how == "sym":
            if rng.random() < 0.1:
                symbols = _weird(rng)
                notes.append(f"symbols={symbols!r}")
                continue
            if not isinstance(symbols, list) or not symbols:
                continue
            k = rng.randrange(len(symbols))
            s = symbols[k]
            if not isinstance(s, dict):
                continue
            key = rng.choice(["name", "addr", "shape", "dtype", "exp", "kind", "value",
                              "<delete>", "<self>"])
            if key == "<self>":
                symbols[k] = _weird(rng)
            elif key == "<delete>":
                s.pop(rng.choice(list(s) or ["name"]), None)
            elif key == "addr" and rng.random() < 0.5:
                s["addr"] = rng.choice([ddr_size - 1, ddr_size, -4, 2**32, s.get("addr", 0) + 1])
            elif key == "shape" and rng.random() < 0.5 and isinstance(s.get("shape"), list):
                sh = list(s["shape"])
                if sh:
                    sh[rng.randrange(len(sh))] = rng.choice([0, -1, 10**6, 2, 1])
                else:
                    sh = [rng.choice([0, 3])]
                s["shape"] = sh
            elif key == "dtype" and rng.random() < 0.5:
                s["dtype"] = rng.choice(["i8", "i32", "f32", "u8"])
            elif key == "name" and rng.random() < 0.5:
                s["name"] = rng.choice(["in:x", "in:labels", "rng_seed", meta.get("logits", "z")
                                        if isinstance(meta, dict) else "z"])
            else:
                s[key] = _weird(rng)
            notes.append(f"symbol {k} {key}")
        elif how == "meta":
            if rng.random() < 0.1 or not isinstance(meta, dict):
                meta = _weird(rng)
                notes.append(f"meta={meta!r}")
                continue
            key = rng.choice(["logits", "params", "params", "params", "origin", "batch"])
            if key == "params" and isinstance(meta.get("params"), list) and meta["params"] \
                    and rng.random() < 0.8:
                k = rng.randrange(len(meta["params"]))
                pp = meta["params"][k]
                if isinstance(pp, dict) and rng.random() < 0.9:
                    f = rng.choice(["name", "shape", "master", "grad", "out_tab", "in_tab",
                                    "in_block", "<delete>"])
                    if f == "<delete>":
                        pp.pop(rng.choice(list(pp) or ["name"]), None)
                    elif f in ("master", "grad", "out_tab", "in_tab") and rng.random() < 0.5:
                        pp[f] = rng.choice([s.get("name") for s in p.symbols])
                    elif f == "shape" and rng.random() < 0.5:
                        pp[f] = rng.choice([[1], [2, 2], [0], [10**6], [-1, 4]])
                    elif f == "in_block" and rng.random() < 0.5:
                        pp[f] = rng.choice([0, 2, 16, -1, 10**6])
                    else:
                        pp[f] = _weird(rng)
                    notes.append(f"meta.params[{k}].{f}")
                else:
                    meta["params"][k] = _weird(rng)
                    notes.append(f"meta.params[{k}]")
            elif key == "logits" and rng.random() < 0.5:
                meta["logits"] = rng.choice([s.get("name") for s in p.symbols])
                notes.append(f"meta.logits={meta['logits']}")
            else:
                meta[key] = _weird(rng)
                notes.append(f"meta.{key}")
        elif how == "ddr":
            ddr_size = max(0, rng.choice([0, len(data), len(data) - 1, ddr_size - 1,
                                          ddr_size // 2, ddr_size + 1, base.target.ddr_bytes,
                                          base.target.ddr_bytes + 1, 2**32 - 1]))
            notes.append(f"ddr_size={ddr_size}")
        elif how == "data":
            cut = rng.randrange(len(data) + 1)
            data = data[:cut]
            notes.append(f"data truncated to {cut}")
        elif how == "fp":
            fp = bytes(rng.randrange(256) for _ in range(8))
            notes.append("target fingerprint")
        elif how == "codebytes":
            flat = bytearray(b"".join(code))
            cut = rng.randrange(len(flat))
            flat = flat[:cut]
            code = [bytes(flat[k:k + WORD_BYTES]) for k in range(0, len(flat), WORD_BYTES)]
            notes.append(f"code cut to {cut} bytes")
    try:
        blob = write_program(Program(fp, b"".join(code), data, ddr_size, symbols, meta))
    except Exception as e:                      # the writer itself refused: not a finding
        return b"", f"unwritable ({type(e).__name__})"
    return blob, "; ".join(notes)


_MASK_CHARS = list("0123456789-,:# \t\n\r.") + ["conv1", "conv2", "fc1", "fc2", "fc3", "x",
                                                 "\u00e9", "\x00", "\ufeff", "é1", "99999",
                                                 "9" * 5000, "conv1.weight", "-", "--", ":"]


def mutate_mask(rng: random.Random, text: str) -> tuple[str, str]:
    how = rng.choice(["chars", "chars", "chars", "lines", "random", "numbers"])
    if how == "random":
        n = rng.randrange(60)
        return "".join(rng.choice(_MASK_CHARS) for _ in range(n)), "random text"
    s = list(text)
    if how == "chars":
        for _ in range(rng.choice([1, 1, 2, 3, 6])):
            k = rng.randrange(len(s) + 1)
            op = rng.random()
            if op < 0.4 and s:
                del s[min(k, len(s) - 1)]
            elif op < 0.7:
                s.insert(k, rng.choice(_MASK_CHARS))
            elif s:
                s[min(k, len(s) - 1)] = rng.choice(_MASK_CHARS)
        return "".join(s), "char edits"
    if how == "lines":
        lines = text.split("\n")
        i = rng.randrange(len(lines))
        op = rng.choice(["dup", "del", "swap", "logits", "empty"])
        if op == "dup":
            lines.insert(rng.randrange(len(lines) + 1), lines[i])
        elif op == "del":
            del lines[i]
        elif op == "swap":
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "logits":
            lines.append("fc2: 0-3")
        else:
            lines.append(rng.choice(["conv1:", "conv1: ,", "conv1: 5-2", "conv1: 8",
                                     "conv1 0-3", ": 1", "conv1: 1 - 3", "conv1: -1"]))
        return "\n".join(lines), f"line {op}"
    return re.sub(r"\d+", lambda m: str(rng.choice([0, 7, 8, 15, 16, 31, 32, 2**31, 10**30,
                                                  int(m.group()) + 1])), text), "numbers"


_TOML_VALUES = ["0", "-1", "1", "2", "16", "1.5", "true", '"x"', "[]", "{}", "[1, 2]",
                "1e9", "9223372036854775807", "99999999999999999999", "inf", "nan",
                str(2**20), str(2**20 + 1), str(2**32), str(2**40), "'''x'''", "0x10",
                "1979-05-27", "3", "4", "64", "1_000"]


def mutate_toml(rng: random.Random, text: str) -> tuple[bytes, str]:
    how = rng.choice(["value", "value", "value", "line", "chars", "random", "binary"])
    if how == "binary":
        n = rng.randrange(1, 80)
        return bytes(rng.randrange(256) for _ in range(n)), "random bytes"
    if how == "random":
        n = rng.randrange(40)
        return "".join(rng.choice(list("[]=\"'.\n #abc019-{}")) for _ in range(n)).encode(), \
            "random text"
    lines = text.split("\n")
    if how == "value":
        idx = [i for i, ln in enumerate(lines) if "=" in ln and not ln.startswith("#")]
        i = rng.choice(idx)
        k = lines[i].split("=")[0]
        v = rng.choice(_TOML_VALUES)
        lines[i] = f"{k}= {v}"
        return "\n".join(lines).encode(), f"line {i + 1}: {k.strip()} = {v}"
    if how == "line":
        i = rng.randrange(len(lines))
        op = rng.choice(["del", "dup", "swap"])
        if op == "del":
            del lines[i]
        elif op == "dup":
            lines.insert(rng.randrange(len(lines) + 1), lines[i])
        else:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        return "\n".join(lines).encode(), f"line {op} {i + 1}"
    s = bytearray(text.encode())
    for _ in range(rng.choice([1, 2, 4])):
        k = rng.randrange(len(s))
        s[k] = rng.choice(b"[]=\"'.\n #0123456789\xff\x00")
    return bytes(s), "char edits"


def make_batch(rng: random.Random, base: Base, path: Path) -> str:
    x, y = base.x.copy(), base.y.copy()
    how = rng.choice(["ok", "xshape", "xdtype", "nonfinite", "huge", "ylabel", "ydtype",
                      "yshape", "missing", "extra", "notzip", "trunc", "flip", "scalar",
                      "empty", "object", "seed"])
    arrays = {"x": x, "y": y}
    if how == "xshape":
        arrays["x"] = rng.choice([x[:1], x.reshape(16, -1), x[:, :, :-1], x[None], x[0, 0, 0],
                                  np.zeros((0,) + x.shape[1:], np.float32)])
    elif how == "xdtype":
        arrays["x"] = x.astype(rng.choice([np.float64, np.float16, np.int8, np.int64, bool,
                                           np.complex64, np.uint8, "U3", "S2"]))
    elif how == "nonfinite":
        x.reshape(-1)[rng.randrange(x.size)] = rng.choice([np.nan, np.inf, -np.inf])
    elif how == "huge":
        x *= rng.choice([1e30, -1e38, 0.0, 1e-40])
    elif how == "ylabel":
        y[rng.randrange(y.size)] = rng.choice([-1, 10, 11, 2**40, -2**63, 9])
    elif how == "ydtype":
        arrays["y"] = y.astype(rng.choice([np.float32, np.int8, np.uint64, bool, np.complex64,
                                           "U2", np.int32]))
    elif how == "yshape":
        arrays["y"] = rng.choice([y[:3], y.reshape(4, 4), y[0], np.zeros(0, np.int64), y[None]])
    elif how == "missing":
        del arrays[rng.choice(["x", "y"])]
    elif how == "extra":
        arrays["z"] = np.arange(3)
    elif how == "scalar":
        arrays[rng.choice(["x", "y"])] = np.float32(1.0)
    if how == "object":
        with open(path, "wb") as f:
            np.savez(f, x=np.array([{"a": 1}, None], dtype=object), y=y)
        return how
    np.savez(path, **arrays)
    if how in ("notzip", "trunc", "flip", "empty"):
        raw = bytearray(path.read_bytes())
        if how == "notzip":
            raw = bytearray(rng.randrange(256) for _ in range(rng.randrange(300)))
        elif how == "trunc":
            raw = raw[:rng.randrange(len(raw))]
        elif how == "empty":
            raw = bytearray()
        else:
            for _ in range(rng.choice([1, 3, 10])):
                raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(raw))
    return how


# ---------------------------------------------------------------------------- text kinds

_TOKENS = ["0", "-1", "1", "2", "255", "65535", str(2**31), str(2**32), str(2**63), str(10**30),
           "-" + str(2**63), "0x", "0x10", "1.5", "nan", "inf", "{", "}", "[", "]", "(", ")",
           ",", ":", "=", ";", "#", "%", "@", "\"", "'", ".", ".data", ".symbol", ".meta",
           ".target", "END", "x", "%x", "i8", "i32", "f32", "<2^-6>", "2^", "\t", " ", "\n",
           "\x00", "\u00e9", "\ufeff", "nest", "value", "node", "tile", "unit", "source",
           "edgec", "graph", "loop", "v1", "stage", "null", "true", "{}", "[]", "9" * 400]


def _extreme(rng: random.Random, s: str) -> str:
    return str(rng.choice([0, -1, 1, 2, 7, 8, 15, 16, 31, 32, 63, 64, 127, 128, 255, 256,
                           65535, 65536, 2**31 - 1, 2**31, 2**32, 2**63, 10**30, -2**31,
                           -(10**30), int(s) + 1 if len(s) < 30 else 1]))


def mutate_lines(rng: random.Random, text: str) -> tuple[str, str]:
    """Byte/line-level text mutations shared by the assembly, IR and model.py kinds."""
    notes = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        lines = text.split("\n")
        how = rng.choice(["del", "dup", "swap", "chars", "chars", "trunc", "token", "token",
                          "number", "number", "number", "empty"])
        i = rng.randrange(len(lines))
        if how == "del":
            del lines[i]
        elif how == "dup":
            lines.insert(rng.randrange(len(lines) + 1), lines[i])
        elif how == "swap":
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif how == "empty":
            lines[i] = ""
        elif how == "trunc":
            text = text[:rng.randrange(len(text) + 1)]
            notes.append("truncate")
            continue
        elif how == "chars":
            s = list(lines[i])
            for _ in range(rng.choice([1, 1, 2, 4])):
                k = rng.randrange(len(s) + 1)
                ch = rng.choice(_TOKENS[:48] + [chr(rng.randrange(32, 127))])[:1]
                if s and k < len(s) and rng.random() < 0.5:
                    s[k] = ch if rng.random() < 0.7 else ""
                else:
                    s.insert(k, ch)
            lines[i] = "".join(s)
        elif how == "token":
            ln = lines[i]
            k = rng.randrange(len(ln) + 1)
            tok = rng.choice(_TOKENS)
            lines[i] = ln[:k] + rng.choice(["", " "]) + tok + rng.choice(["", " "]) + ln[k:]
        else:                                   # change numbers to extreme values
            nums = list(re.finditer(r"-?\d+", lines[i]))
            if not nums:
                nums = list(re.finditer(r"-?\d+", text))
                if not nums:
                    continue
                m = rng.choice(nums)
                text = text[:m.start()] + _extreme(rng, m.group()) + text[m.end():]
                notes.append("number")
                continue
            m = rng.choice(nums)
            lines[i] = lines[i][:m.start()] + _extreme(rng, m.group()) + lines[i][m.end():]
        notes.append(f"{how} line {i + 1}")
        text = "\n".join(lines)
    return text, ", ".join(notes)


def mutate_onnx(rng: random.Random, raw: bytes) -> tuple[bytes, str]:
    """Byte-level or protobuf-field-level mutation of the base lenet.onnx."""
    import onnx
    from onnx import helper as h
    how = rng.choice(["bytes", "field", "field", "field", "field"])
    if how == "bytes":
        b = bytearray(raw)
        op = rng.choice(["flip", "trunc", "bytes", "splice"])
        if op == "flip":
            for _ in range(rng.choice([1, 2, 8])):
                k = rng.randrange(len(b) * 8)
                b[k // 8] ^= 1 << (k % 8)
        elif op == "trunc":
            b = b[:rng.randrange(len(b))]
        elif op == "bytes":
            k = rng.randrange(len(b))
            b[k:k + 4] = bytes(rng.randrange(256) for _ in range(4))
        else:
            a, c = sorted(rng.randrange(len(b)) for _ in range(2))
            k = rng.randrange(len(b))
            b[k:k] = b[a:c][:512]
        return bytes(b), f"bytes {op}"
    m = onnx.load_from_string(raw)
    g = m.graph
    notes = []
    for _ in range(rng.choice([1, 1, 2])):
        f = rng.choice(["op", "attr", "attr", "input", "output", "delnode", "dupnode",
                        "swapnode", "init_dims", "init_raw", "init_type", "delinit", "opset",
                        "inshape", "intype", "graphout", "domain"])
        nodes = list(g.node)
        n = rng.choice(nodes) if nodes else None
        if f == "op" and n is not None:
            n.op_type = rng.choice(["Conv", "Relu", "MaxPool", "Gemm", "Flatten", "MatMul",
                                    "Add", "Sin", "Reshape", "AveragePool", "", "Identity"])
        elif f == "attr" and n is not None and n.attribute:
            a = rng.choice(list(n.attribute))
            if a.ints:
                a.ints[rng.randrange(len(a.ints))] = rng.choice([0, -1, 2**31, 100, 3, -2**40])
                if rng.random() < 0.3:
                    a.ints.append(1)
            elif a.type == onnx.AttributeProto.INT:
                a.i = rng.choice([0, -1, 2, 2**40, 5])
            elif a.type == onnx.AttributeProto.FLOAT:
                a.f = rng.choice([0.0, -1.0, float("nan"), 1e30])
            else:
                n.attribute.remove(a)
            if rng.random() < 0.2:
                n.attribute.append(h.make_attribute(rng.choice(["kernel_shape", "foo",
                                                                "strides", "group"]), 2))
        elif f == "input" and n is not None and n.input:
            k = rng.randrange(len(n.input))
            n.input[k] = rng.choice(["", "nope", "x", g.node[0].output[0]]
                                    + [o for nn in nodes for o in nn.output][-3:])
        elif f == "output" and n is not None and n.output:
            n.output[0] = rng.choice(["x", "", "dup", nodes[0].output[0]])
        elif f == "delnode" and nodes:
            g.node.remove(n)
        elif f == "dupnode" and n is not None:
            g.node.append(copy.deepcopy(n))
        elif f == "swapnode" and len(nodes) > 1:
            i, j = rng.randrange(len(nodes)), rng.randrange(len(nodes))
            a, b = copy.deepcopy(g.node[i]), copy.deepcopy(g.node[j])
            g.node[i].CopyFrom(b)
            g.node[j].CopyFrom(a)
        elif f in ("init_dims", "init_raw", "init_type", "delinit") and g.initializer:
            t = rng.choice(list(g.initializer))
            if f == "init_dims" and t.dims:
                t.dims[rng.randrange(len(t.dims))] = rng.choice([0, 1, -1, 2**20, 3])
            elif f == "init_raw":
                t.raw_data = t.raw_data[:rng.randrange(len(t.raw_data) + 1)] \
                    if rng.random() < 0.5 else b"\x00\x00\xc0\x7f" * (len(t.raw_data) // 4)
            elif f == "init_type":
                t.data_type = rng.choice([0, 2, 6, 7, 10, 11, 99])
            else:
                g.initializer.remove(t)
        elif f == "opset":
            m.opset_import[0].version = rng.choice([1, 12, 13, 17, 99, -1, 2**40])
        elif f == "domain" and n is not None:
            n.domain = rng.choice(["com.microsoft", "x", "ai.onnx"])
        elif f in ("inshape", "intype") and g.input:
            tt = g.input[0].type.tensor_type
            if f == "intype":
                tt.elem_type = rng.choice([0, 2, 6, 7, 10, 11])
            elif tt.shape.dim:
                d = tt.shape.dim[rng.randrange(len(tt.shape.dim))]
                if rng.random() < 0.3:
                    d.dim_param = "N"
                else:
                    d.dim_value = rng.choice([0, 1, 2, 7, 10**6, 2**40])
        elif f == "graphout" and g.output:
            g.output[0].name = rng.choice(["x", "nope", nodes[0].output[0] if nodes else "z"])
        else:
            continue
        notes.append(f)
    return m.SerializeToString(), "field " + ",".join(notes)


def _cli(base: Base, argv: list[str], out: Path, desc: str, repro, suffix, located):
    """cli.main with an existing output that must survive a failed run."""
    from edgec.compiler.workflows import cli
    out.write_bytes(base.out_bytes)
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    msg = err.getvalue()
    if rc != 0:
        if out.read_bytes() != base.out_bytes:
            return "damaged-output", f"{desc}: rc={rc}", repro, suffix
        if "Traceback" in msg or not msg.startswith("edgec: error: "):
            return "traceback", f"{desc}: {msg[-800:]}", repro, suffix
        if rc != 1 or not located(msg):
            return "bad-message", f"{desc}: rc={rc} {msg[:500]}", repro, suffix
        return "clean-error", desc, None, suffix
    if [f for f in os.listdir(out.parent) if f.startswith(".edgec-")]:
        return "damaged-output", f"{desc}: temp files left", repro, suffix
    return "ok", desc, None, suffix


# ---------------------------------------------------------------------------- command lines

COMMANDS = ("compile", "remask", "ir", "finetune", "run", "verify", "export-onnx", "disasm",
            "report", "asm", "mask")
OPTIONS = {   # option -> values to draw from (None: a flag); files come from Base.files
    "--mask": "FILE", "--target": "FILE", "--input": "FILE", "--data": "FILE",
    "--eval": "FILE", "--calib": "FILE", "-o": "OUT", "--json": "OUT", "--csv": "OUT",
    "--plot": "OUT", "--lr": ["0.01", "-1", "0", "nan", "inf", "1e9", "x"],
    "--steps": ["1", "0", "-3", "2.5", "x"], "--seed": ["0", "-1", "99999999999999999999"],
    "--keep": ["0.5", "0", "1.5", "-0.1", "nan"], "--by": ["l1", "bn-gamma", "x"],
    "--classes": ["0,3", "0,3,12", "3", "a,b", "0,0", ""], "--train": ["fc*", "nomatch*", ""],
    "--freeze": ["conv1*", "*"], "--batch-seed": ["0", "x"], "--sr-seeds": ["1", "0", "x"],
    "--momentum": ["0.9", "1.5", "-1"], "--weight-decay": ["0", "-1"],
    "--labels": ["pseudo", "x"], "--loss": ["kd", "x"], "-q": None, "--quiet": None,
    "--remaskable": None, "--bias-only": None, "--adapt-bn": None, "--global": None,
    "--interpret": None, "--maks": "FILE", "--stpes": ["1"], "--lrr": ["0.1"], "-z": None,
}


def argv_files(base: Base) -> dict[str, str]:
    """Inputs of every kind the CLI reads, to put in every slot."""
    w = base.work
    files = {"model": str(LENET / "model.py"), "mask": str(LENET / "user.mask"),
             "prog": str(base.prog_path), "batch": str(base.batch_path),
             "missing": str(w / "nope.py"), "dir": str(w), "empty": str(w / "empty.py"),
             "npy": str(w / "arr.npy"), "text": str(w / "notes.txt"),
             "ir": str(w / "dump" / sorted(base.ir)[0]),
             "toml": str(Path(__file__).resolve().parent.parent / "isa/targets/default.toml")}
    (w / "empty.py").write_text("")
    (w / "notes.txt").write_text("just some notes\n")
    np.save(w / "arr.npy", base.x)
    if base.onnx:
        files["onnx"] = str(w / "lenet.onnx")
    return files


def random_argv(rng: random.Random, files: dict[str, str], out: Path) -> list[str]:
    argv = [rng.choice(COMMANDS)] if rng.random() < 0.97 else [rng.choice(["", "compil", "-x"])]
    argv.append(files[rng.choice(sorted(files))])
    own = [o for o in _own_options(argv[0]) if o in OPTIONS]
    for _ in range(rng.choice([0, 1, 1, 2, 3, 4])):
        opt = rng.choice(own if own and rng.random() < 0.7 else sorted(OPTIONS))
        vals = OPTIONS[opt]
        if vals is None:
            argv.append(opt)
        elif vals == "FILE":
            argv += [opt, files[rng.choice(sorted(files))]]
        elif vals == "OUT":
            argv += [opt, str(out)]
        else:
            argv += [opt, rng.choice(vals)]
    if rng.random() < 0.05:
        argv.append(files[rng.choice(sorted(files))])      # a stray extra argument
    if "-q" not in argv:
        argv.append("-q")
    if "--steps" in argv:      # keep the rare valid finetune short
        argv[argv.index("--steps") + 1] = str(min(2, _int_or(argv[argv.index("--steps") + 1])))
    return argv


def _own_options(cmd: str) -> list[str]:
    """The options the subcommand `cmd` takes (from the CLI's own parser)."""
    from edgec.compiler.workflows import cli
    if cmd not in COMMANDS:
        return []
    ap = cli.build_parser(cmd)
    sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(o for a in sub.choices[cmd]._actions for o in a.option_strings)


def _int_or(text: str, default: int = 1) -> int:
    try:
        return int(text)
    except ValueError:
        return default


def run_argv(base: Base, argv: list[str], out: Path):
    """cli.main on one command line: the outcome and its detail."""
    from edgec.compiler.workflows import cli
    out.write_bytes(base.out_bytes)
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(argv)
        except SystemExit as e:            # argparse: usage errors exit 2, --help exits 0
            rc = e.code if isinstance(e.code, int) else 2
    msg = err.getvalue()
    desc = " ".join(argv)
    if rc in (0, 3):
        return "ok", desc
    if out.read_bytes() != base.out_bytes:
        return "damaged-output", f"{desc}: rc={rc}"
    lines = msg.strip().splitlines()
    if "Traceback" in msg or not lines or "error" not in lines[-1]:
        return "traceback", f"{desc}: {msg[-800:]}"
    last = lines[-1]
    named = [a for a in argv if len(a) >= 2 and (a in last or Path(a).name in last)
             or repr(a) in last]
    if argv[0] not in COMMANDS and "invalid choice" in last:
        named = [argv[0]]
    if not named:       # the message must say which file, option or value is wrong
        return "bad-message", f"{desc}: {msg[-500:]}"
    return "clean-error", desc


# ---------------------------------------------------------------------------- runners

def _located(msg: str, *prefixes: str) -> bool:
    return any(p in msg for p in prefixes)


def run_prog_blob(base: Base, blob: bytes, path: str) -> str | None:
    """read -> disassemble -> emulate.  Returns None or the message of a clean error."""
    from edgec.isa.container import read_program
    from edgec.isa.disasm import disassemble
    from edgec.runtime_emu.host import run_step
    p = read_program(blob, path)
    disassemble(p)
    out, m = run_step(p, base.target, base.x, base.y)
    return None


def case(i: int, kind: str, rng: random.Random, base: Base, work: Path):
    """Run one case; returns (outcome, detail, reproducer bytes or None, suffix)."""
    from edgec.isa.errors import EdgecError
    desc, repro, suffix, located = "", None, ".bin", ()
    try:
        if kind == "prog":
            blob, desc = mutate_prog_bytes(rng, base.blob)
            repro, suffix = blob, ".bin"
            located = ("case.bin:", "trap at instruction ", "program ", "symbol ",
                       "parameter ", "label")
            run_prog_blob(base, blob, "case.bin")
        elif kind == "prog-st":
            blob, desc = mutate_program(rng, base)
            if not blob:
                return "ok", desc, None, suffix
            repro, suffix = blob, ".bin"
            located = ("case.bin:", "trap at instruction ", "program ", "symbol ",
                       "parameter ", "label")
            run_prog_blob(base, blob, "case.bin")
        elif kind == "mask":
            from edgec.compiler.mask.file import parse_mask
            text, desc = mutate_mask(rng, base.mask_text)
            repro, suffix = text.encode("utf-8", "surrogatepass"), ".mask"
            try:
                parse_mask("case.mask", base.layers, base.logits_layer, text=text)
            except EdgecError as e:
                if not re.match(r"case\.mask:\d+:\d+: ", str(e)):
                    return "bad-message", f"{desc}: {e}", repro, suffix
                raise
        elif kind == "target":
            from edgec.isa.container import Program
            from edgec.isa.target import load_target
            from edgec.runtime_emu.host import run_step
            raw, desc = mutate_toml(rng, base.toml_text)
            repro, suffix = raw, ".toml"
            tpath = work / "case.toml"
            tpath.write_bytes(raw)
            located = (str(tpath) + ":",)
            tg = load_target(tpath)
            located = ("trap at instruction ", "program ", "DDR")
            p = base.program
            p2 = Program(tg.fingerprint, p.code, p.data, p.ddr_size, p.symbols, p.meta)
            run_step(p2, tg, base.x, base.y)
        elif kind == "batch":
            from edgec.compiler.workflows import cli
            bpath = work / "case.npz"
            desc = make_batch(rng, base, bpath)
            repro, suffix = bpath.read_bytes(), ".npz"
            base.out_path.write_bytes(base.out_bytes)
            argv = ["run", str(base.prog_path), "--input", str(bpath), "-o", str(base.out_path)]
            if desc == "seed":
                argv += ["--seed", str(rng.choice([-1, 2**32, 2**64, 0, 5]))]
            err = io.StringIO()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                rc = cli.main(argv)
            msg = err.getvalue()
            if rc != 0:
                if base.out_path.read_bytes() != base.out_bytes:
                    return "damaged-output", f"{desc}: rc={rc}", repro, suffix
                if "Traceback" in msg or not msg.startswith("edgec: error: "):
                    return "traceback", f"{desc}: {msg[-500:]}", repro, suffix
                if rc != 1:
                    return "bad-message", f"{desc}: rc={rc} {msg}", repro, suffix
                if not _located(msg, "case.npz", "input", "label", "seed", "shape"):
                    return "bad-message", f"{desc}: {msg}", repro, suffix
                return "clean-error", desc, None, suffix
            leftovers = [f for f in os.listdir(work) if f.startswith(".edgec-")]
            if leftovers:
                return "damaged-output", f"{desc}: temp files left {leftovers}", repro, suffix
            return "ok", desc, None, suffix
        elif kind == "asm":
            from edgec.compiler.asm import assemble
            text, desc = mutate_lines(rng, base.asm_text)
            repro, suffix = text.encode("utf-8", "surrogatepass"), ".s"
            if rng.random() < 0.1:              # through the CLI, with an existing output
                src = work / "case.s"
                src.write_text(text, encoding="utf-8", errors="surrogatepass")
                return _cli(base, ["asm", str(src), "-o", str(work / "asm.bin")],
                            work / "asm.bin", desc, repro, suffix,
                            lambda m: re.search(re.escape(str(src)) + r":\d+:\d+: ", m))
            try:
                assemble(text, "case.s")
            except EdgecError as e:
                if not re.match(r"case\.s:\d+:\d+: ", str(e)):
                    return "bad-message", f"{desc}: {e}", repro, suffix
                raise
        elif kind == "ir":
            from edgec.compiler.ir.text import check_ir, parse_ir
            name = rng.choice(sorted(base.ir))
            text, desc = mutate_lines(rng, base.ir[name])
            desc = f"{name}: {desc}"
            suffix = name[name.rindex("."):]
            repro = text.encode("utf-8", "surrogatepass")
            fname = "case" + suffix
            if rng.random() < 0.04:             # resume the pipeline through the CLI
                src = work / fname
                src.write_text(text, encoding="utf-8", errors="surrogatepass")
                return _cli(base, ["compile", str(src), "-q", "-o", str(work / "ir.bin")],
                            work / "ir.bin", desc, repro, suffix,
                            lambda m: str(src) + ":" in m)
            try:
                f = parse_ir(text, fname)
                check_ir(f, fname)
            except EdgecError as e:
                if not re.match(re.escape(fname) + r":\d+:\d+: ", str(e)):
                    return "bad-message", f"{desc}: {e}", repro, suffix
                raise
        elif kind == "onnx":
            if not base.onnx:
                return "ok", "no base ONNX", None, suffix
            from edgec.compiler.frontend.onnx_in import load_onnx
            raw, desc = mutate_onnx(rng, base.onnx)
            repro, suffix = raw, ".onnx"
            src = work / "case.onnx"
            src.write_bytes(raw)
            if rng.random() < 0.1:              # whole compile through the CLI
                return _cli(base, ["compile", str(src), "-q", "--calib",
                                   str(work / "calib.npz"), "-o", str(work / "onnx.bin")],
                            work / "onnx.bin", desc, repro, suffix,
                            lambda m: "case.onnx:" in m)
            located = ("case.onnx:",)
            load_onnx(str(src), str(work / "calib.npz"))
        elif kind == "argv":
            if not hasattr(base, "files"):
                base.files = argv_files(base)
            argv = random_argv(rng, base.files, work / "argv.out")
            outcome, desc = run_argv(base, argv, work / "argv.out")
            return outcome, desc, None, ".txt"
        elif kind == "model":
            text, desc = mutate_lines(rng, base.model_text)
            repro, suffix = text.encode("utf-8", "surrogatepass"), ".py"
            src = base.model_dir / "model.py"
            src.write_text(text, encoding="utf-8", errors="surrogatepass")
            t0 = time.perf_counter()
            res = _cli(base, ["compile", str(src), "-q", "-o", str(base.model_dir / "p.bin")],
                       base.model_dir / "p.bin", desc, repro, suffix,
                       lambda m: re.match(r"edgec: error: (\S*/)?model\.py:", m))
            if res[0] == "clean-error" and time.perf_counter() - t0 >= base.time_limit * 0.95:
                return "hang", desc + " (interrupted inside model.py)", repro, suffix
            return res
        return "ok", desc, None, suffix
    except Hang:
        return "hang", desc, repro, suffix
    except EdgecError as e:
        if kind == "batch":
            return "traceback", f"{desc}: EdgecError escaped cli.main: {e}", repro, suffix
        if located and not _located(str(e), *located):
            return "bad-message", f"{desc}: {e}", repro, suffix
        return "clean-error", desc, None, suffix
    except Exception as e:  # noqa: BLE001 - the finding
        tb = traceback.format_exc(limit=-4)
        return "traceback", f"{desc}: {type(e).__name__}: {e}\n{tb}", repro, suffix


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", type=int, default=None, help="run only case N (reproduce)")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--time-limit", type=float, default=10.0, help="seconds per case")
    ap.add_argument("--json", help="write the counts and findings as JSON")
    ap.add_argument("--save", help="folder for failing inputs (default: a temp folder)")
    ap.add_argument("--show", type=int, default=5, help="findings printed in full")
    args = ap.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    work = Path(tempfile.mkdtemp(prefix="edgec-fuzz-"))
    save = Path(args.save) if args.save else work / "findings"
    save.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    base = Base(work)
    t_setup = time.perf_counter() - t0
    base.time_limit = args.time_limit
    signal.signal(signal.SIGALRM, _alarm)
    sched = [k for k in KINDS if k in kinds for _ in range(WEIGHTS[k])]
    counts: dict[str, Counter] = defaultdict(Counter)
    findings = []
    slowest = (0.0, None)
    ids = [args.only] if args.only is not None else range(args.cases)
    t1 = time.perf_counter()
    for i in ids:
        rng = random.Random(args.seed * 10**9 + i)
        kind = sched[i % len(sched)]
        tc = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, args.time_limit)
        try:
            outcome, detail, repro, suffix = case(i, kind, rng, base, work)
        except Hang:
            outcome, detail, repro, suffix = "hang", "(outside the case body)", None, ""
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        dt = time.perf_counter() - tc
        if dt > slowest[0]:
            slowest = (dt, f"case {i} ({kind})")
        counts[kind][outcome] += 1
        if outcome not in ("ok", "clean-error"):
            f = {"case": i, "kind": kind, "outcome": outcome, "detail": detail}
            if repro is not None:
                rp = save / f"case{i}-{kind}{suffix}"
                rp.write_bytes(repro)
                f["reproducer"] = str(rp)
            findings.append(f)
            if len(findings) <= args.show:
                print(f"--- case {i} [{kind}] {outcome}: {detail}\n    reproducer: "
                      f"{f.get('reproducer')}  (python benchmarks/fuzz.py --seed {args.seed} "
                      f"--only {i})", file=sys.stderr)
        if args.only is None and (i + 1) % 1000 == 0:
            print(f"  {i + 1} cases, {time.perf_counter() - t1:.0f}s", file=sys.stderr)
    elapsed = time.perf_counter() - t1

    header = f"{'kind':<9}" + "".join(f"{o:>15}" for o in OUTCOMES) + f"{'total':>8}"
    print(header)
    tot = Counter()
    for k in kinds:
        c = counts[k]
        tot.update(c)
        print(f"{k:<9}" + "".join(f"{c[o]:>15}" for o in OUTCOMES) + f"{sum(c.values()):>8}")
    print(f"{'all':<9}" + "".join(f"{tot[o]:>15}" for o in OUTCOMES) + f"{sum(tot.values()):>8}")
    n = sum(tot.values())
    print(f"{n} cases in {elapsed:.1f}s ({1000 * elapsed / max(n, 1):.2f} ms/case; setup "
          f"{t_setup:.1f}s; slowest {slowest[0]:.2f}s: {slowest[1]}); findings: "
          f"{len(findings)}" + (f" saved under {save}" if findings else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "cases": n, "seed": args.seed, "seconds": elapsed,
            "counts": {k: dict(counts[k]) for k in kinds}, "findings": findings[:200],
            "slowest_case_s": slowest[0]}, indent=1))
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
