"""DDR memory plan: where every tensor of the program lives, and the data section.

Order: channel index tables (first: they make the small "tables" section of prog.bin
that `edgec remask` rewrites, isa/container.py), rng seed, constants, parameters (compute
copies), masters (all initialised from the data section), then inputs and every
materialised activation, error and gradient (zero-initialised).  A reshape aliases its
input.  Each tensor starts on a 16-byte boundary.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgec.isa.errors import EdgecError
from edgec.isa.target import Target, ddr_error

from ..ir.graph import Graph
from ..ir.ops import REGISTRY as OP

ALIGN = 16
_NP = {"i8": "<i1", "i32": "<i4"}


@dataclass
class Symbol:
    name: str
    kind: str
    addr: int
    shape: tuple[int, ...]
    dtype: str
    exp: int | None
    value: str | None = None     # graph value holding the final content (for verify)
    xreg: tuple[int, ...] | None = None   # exponent registers (dynamic formats), summed

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * (1 if self.dtype == "i8" else 4)

    def to_json(self) -> dict:
        d = {"name": self.name, "kind": self.kind, "addr": self.addr,
             "shape": list(self.shape), "dtype": self.dtype, "exp": self.exp,
             "value": self.value}
        if self.xreg:
            d["xreg"] = list(self.xreg)
        return d


@dataclass
class MemoryPlan:
    symbols: dict[str, Symbol] = field(default_factory=dict)
    of_value: dict[str, Symbol] = field(default_factory=dict)   # graph value -> symbol
    data: bytearray = field(default_factory=bytearray)
    size: int = 0

    def place(self, name, kind, shape, dtype, exp=None, value=None, init=None) -> Symbol:
        self.size = -(-self.size // ALIGN) * ALIGN
        s = Symbol(name, kind, self.size, tuple(shape), dtype, exp, value)
        self.size += s.nbytes
        self.symbols[name] = s
        if init is not None:
            raw = np.ascontiguousarray(np.asarray(init).astype(_NP[dtype])).tobytes()
            if len(raw) != s.nbytes:
                raise EdgecError(f"tensor {name!r}: its shape {list(shape)} ({dtype}) does "
                                 f"not match its initial data ({len(raw)} bytes)")
            self.data.extend(b"\0" * (s.addr - len(self.data)))
            self.data.extend(raw)
        return s


def plan_memory(g: Graph, seed: int, tg: Target, regs=None) -> MemoryPlan:
    """`regs`: the exponent registers of a dynamic-format program (passes/dynfmt.py): its
    table becomes the symbol `xtab` and every symbol records its registers."""
    m = plan_layout(g, seed, tg, regs)
    if regs is not None:
        for s in [*m.symbols.values(), *m.of_value.values()]:
            if s.value is not None and s.kind not in ("master", "mom"):
                s.xreg = regs.regs(s.value) or None
    return m


def plan_layout(g: Graph, seed: int, tg: Target, regs=None) -> MemoryPlan:
    m = MemoryPlan()
    V = g.values
    for layer, kept in sorted(g.meta.get("mask", {}).items()):
        m.place(f"tab:{layer}", "table", (len(kept),), "i32", init=np.array(kept))
    for name, kept in sorted(g.meta.get("tables", {}).items()):    # concat / slice tables
        m.place(f"tab:{name}", "table", (len(kept),), "i32", init=np.array(kept))
    m.place("rng_seed", "seed", (1,), "i32", init=np.array([seed], np.uint32).view(np.int32))
    if regs is not None:
        table = regs.table()
        m.place("xtab", "xtab", table.shape, "i32", value="xtab", init=table)
    for cname, vals in sorted(g.consts.items()):
        m.place(cname, "const", (len(vals),), "i32", init=np.array(vals))
    init = g.meta["init"]
    newval = {n.inputs[i]: n.outputs[i] for n in g.nodes if n.op == "sgd" for i in (0, 1)}
    newval.update({n.inputs[3]: n.outputs[2] for n in g.nodes
                   if n.op == "sgd" and n.attrs.get("mom")})
    newval.update({n.inputs[i + 1]: n.outputs[i] for n in g.nodes if n.op == "bn_adapt"
                   for i in (0, 1)})
    for p in g.params.values():
        # mom: the momentum buffer (zero-initialised; only with --momentum/--weight-decay)
        for vname in (p.value, f"master:{p.name}", f"mom:{p.name}"):
            if vname not in init:         # frozen: no master copy; no momentum buffer
                continue
            v = V[vname]
            kind = vname.split(":")[0] if vname.startswith(("master:", "mom:")) else "param"
            sym = m.place(vname if kind != "param" else f"param:{p.name}", kind,
                          v.shape, v.dtype, v.exp, newval.get(vname, vname), init[vname])
            m.of_value[vname] = sym
            if vname in newval:
                m.of_value[newval[vname]] = sym
    m.of_value["x"] = m.place("in:x", "input", V["x"].shape, "i8", V["x"].exp, "x")
    m.of_value["labels"] = m.place("in:labels", "input", V["labels"].shape, "i32", 0, "labels")
    grads = {g.outputs[k]: k[5:] for k in g.outputs if k.startswith("grad:")}
    for n in g.nodes:
        result = OP[n.op].result
        if result in ("view", "in_place"):
            continue
        out = n.outputs[0]
        if result == "alias":
            src = m.of_value[n.inputs[0]]
            m.of_value[out] = Symbol(src.name, src.kind, src.addr, V[out].shape, src.dtype,
                                     src.exp, src.value)
            continue
        kind = "grad" if out in grads else ("err" if result == "err" or n.attrs.get("grad")
                                            else "act")
        name = f"grad:{grads[out]}" if out in grads else out
        m.of_value[out] = m.place(name, kind, V[out].shape, "i8", V[out].exp, out)
    m.size = -(-m.size // ALIGN) * ALIGN
    if m.size > tg.ddr_bytes:         # (what the emulator checks: the aligned size)
        raise ddr_error(tg, m.size)
    return m
