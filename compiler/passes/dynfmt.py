"""Dynamic fixed point: the exponent registers of a training graph (docs/numerics.md 8).

``exponent_registers(g)`` groups the quantized graph's int8 values into registers (values
that must share an exponent share one), marks each register dynamic or static, and
chooses the rule's bounds ``[lo, hi]`` so that every shift a register takes part in stays
in range for every exponent the rule can reach.  It is a pure function of the graph:
codegen lays the table out in XBUF and DDR from it, and the reference interpreter reads
the same assignment (the arithmetic of shifts and of the rule is implemented separately
by the reference and by the emulator).

Layout of the table (R registers, R words per row): E, P, C, [S, Q] pairs, [S', Q']
pairs, lo, hi, thr (``ROWS`` = 10 rows).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from edgec.isa.errors import EdgecError
from edgec.isa.table import XBUF_WORDS

from ..ir.graph import Graph
from ..ir.ops import GATE_OPS, GRADIENTS, MAC_FORWARD, MAC_OPS, SAME_FORMAT

SPAN = 4            # a dynamic exponent may move this far from its compile-time value
CALM_STEPS = 8      # EXPUPD's M: calm steps before an exponent gets finer
ROWS = 10           # words per register in the table
GRAD_OPS = GRADIENTS         # weight / bias gradients: exact statistics
_ALIAS_OPS = SAME_FORMAT    # outputs that share their input's exponent register


def is_dynamic(g: Graph) -> bool:
    """Training programs have dynamic formats: the quantize pass marks them (meta
    ``dynamic``, printed in the IR text) and the update pass gives them sgd nodes."""
    return bool(g.meta.get("dynamic")) and any(n.op == "sgd" for n in g.nodes)


@dataclass
class Registers:
    names: list[str] = field(default_factory=list)      # register -> name
    of: dict[str, int] = field(default_factory=dict)     # int8 value -> register
    bias: dict[str, tuple[int, int]] = field(default_factory=dict)  # bias value -> (x, w)
    e0: list[int] = field(default_factory=list)
    lo: list[int] = field(default_factory=list)
    hi: list[int] = field(default_factory=list)
    thr: list[int] = field(default_factory=list)
    stats: set = field(default_factory=set)     # values whose producer counts statistics

    @property
    def count(self) -> int:
        return len(self.names)

    def regs(self, value: str) -> tuple[int, ...]:
        """The registers whose exponents sum to ``value``'s exponent (() for none)."""
        if value in self.of:
            return (self.of[value],)
        return self.bias.get(value, ())

    def table(self) -> np.ndarray:
        """The initial table, int32 [ROWS * R] (numerics.md section 8)."""
        R = self.count
        t = np.zeros(ROWS * R, dtype=np.int32)
        t[0:R] = self.e0
        t[R:2 * R] = self.e0
        t[7 * R:8 * R] = self.lo
        t[8 * R:9 * R] = self.hi
        t[9 * R:10 * R] = self.thr
        return t

    def stat_addr(self, r: int) -> int:
        """XBUF address of register r's [S, Q] pair."""
        return 3 * self.count + 2 * r


class _Union:
    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, v: str) -> str:
        p = self.parent.setdefault(v, v)
        if p != v:
            p = self.parent[v] = self.find(p)
        return p

    def join(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def _bias_operands(g: Graph) -> dict[str, tuple[str, str]]:
    """bias value (and its views and updated copies) -> (x, w) of the conv/linear it adds to."""
    out = {}
    src = {n.outputs[0]: n.inputs[0] for n in g.nodes if n.op == "wview"}
    for n in g.nodes:
        if n.op in MAC_FORWARD and len(n.inputs) == 3:
            b = n.inputs[2]
            pair = (n.inputs[0], src.get(n.inputs[1], n.inputs[1]))
            out[b] = pair
            out[src.get(b, b)] = pair
    for n in g.nodes:
        if n.op == "sgd" and n.inputs[0] in out:
            out[n.outputs[0]] = out[n.inputs[0]]
    return out


def _static_roots(g: Graph, u: _Union) -> set[str]:
    """Roots of the classes whose exponent must not move."""
    V = g.values
    fixed = {"x"}
    for p in g.params.values():
        if not p.trainable and not p.is_bias:
            fixed.add(p.value)
    for n in g.nodes:
        a = n.attrs
        if n.op == "loss_grad":
            fixed.add(n.outputs[0])
            if a.get("target", "labels") != "labels":
                fixed.add(n.inputs[1])                  # the teacher's logits
    return {u.find(v) for v in fixed if v in V}


def exponent_registers(g: Graph) -> Registers:
    V = g.values
    u = _Union()
    ints = [v for v, val in V.items() if val.dtype == "i8" and val.exp is not None]
    for v in ints:
        u.find(v)
    for n in g.nodes:
        if n.op in _ALIAS_OPS:          # a concat: every operand shares the register
            for v in n.inputs if n.op == "concat" else n.inputs[:1]:
                u.join(v, n.outputs[0])
        elif n.op == "sgd" and V[n.inputs[0]].dtype == "i8":
            u.join(n.inputs[0], n.outputs[0])
    static = _static_roots(g, u)
    R = Registers(names=["zero"], e0=[0], lo=[0], hi=[0], thr=[0])
    root_reg: dict[str, int] = {}
    for v in ints:
        r = u.find(v)
        if r not in root_reg:
            root_reg[r] = len(R.names)
            R.names.append(r)
            e = V[r].exp
            R.e0.append(e)
            span = 0 if r in static else SPAN
            R.lo.append(e - span)
            R.hi.append(e + span)
            R.thr.append(0)
        R.of[v] = root_reg[r]
    _thresholds(g, R)
    for b, (x, w) in _bias_operands(g).items():
        R.bias[b] = (R.of[x], R.of[w])
    _narrow(g, R)
    if ROWS * R.count > XBUF_WORDS:
        raise EdgecError(f"the program has {R.count} exponent registers; the scale unit's "
                         f"table holds {XBUF_WORDS // ROWS}")
    return R


def _thresholds(g: Graph, R: Registers) -> None:
    """Which producers of dynamic registers count statistics, and thr per register:
    count // 256 elements for activations and errors, 0 for gradients and weights."""
    V = g.values
    count = [0] * R.count
    exact = [False] * R.count
    for n in g.nodes:
        out = n.outputs[0]
        r = R.of.get(out)
        if r is None or R.lo[r] == R.hi[r]:         # static: nothing to count
            continue
        if n.op in MAC_OPS | GATE_OPS | {"add", "bias_grad"}:
            R.stats.add(out)
            count[r] += int(np.prod(V[out].shape))
            exact[r] |= n.op in GRAD_OPS
        elif n.op == "sgd":
            R.stats.add(out)
            exact[r] = True
    for r in range(1, R.count):
        R.thr[r] = 0 if exact[r] else count[r] // 256


def _constraints(g: Graph, R: Registers):
    """(registers, function of their exponents -> value, lo, hi) for every shift."""
    V = g.values
    for n in g.nodes:
        o = n.outputs[0]
        if n.op in MAC_OPS | GATE_OPS:
            regs = (R.of[o], R.of[n.inputs[0]], R.of[n.inputs[1]])      # views: aliases
            yield regs, lambda e: e[0] - e[1] - e[2], -31, 31
        elif n.op == "bias_grad":
            yield (R.of[o], R.of[n.inputs[0]]), lambda e: e[0] - e[1], -31, 31
        elif n.op == "add":
            regs = (R.of[o], R.of[n.inputs[0]], R.of[n.inputs[1]])
            yield regs, lambda e: e[0] - min(e[1], e[2]), -31, 31
            yield regs, lambda e: abs(e[1] - e[2]), 0, 31
        elif n.op == "loss_grad":       # an exp table for every reachable logit exponent
            lo, k = n.attrs.get("lut_lo"), n.attrs.get("nlut", 1)
            z = R.of[n.inputs[0]]
            lo = R.e0[z] if lo is None else lo
            yield (z,), lambda e, b=lo: e[0] - b, 0, k - 1
        if "dclamp" in n.attrs:         # clamp bounds rshift(c, E - ce): 0 <= E - ce <= 31
            v = n.inputs[1] if n.op == "hardtanh_bwd" else o
            yield (R.of[v],), lambda e, c=n.attrs["dclamp"][2]: e[0] - c, 0, 31
        if n.op == "sgd" and len(n.inputs) >= 3:
            g_reg = R.of[n.inputs[2]]
            base = n.attrs["lrshift"] + V[n.inputs[2]].exp
            yield (g_reg,), lambda e, b=base: b - e[0], 0, 31
            c = R.regs(n.inputs[0])
            em = V[n.inputs[1]].exp
            yield c, lambda e, m=em: sum(e) - m, -31, 31


def _narrow(g: Graph, R: Registers) -> None:
    """Shrink [lo, hi] of the registers of a violated shift, symmetrically, until every
    shift holds at every corner of the box (each shift is monotone in each exponent)."""
    cons = list(_constraints(g, R))
    changed = True
    while changed:
        changed = False
        for regs, f, lo, hi in cons:
            corners = itertools.product(*[(R.lo[r], R.hi[r]) for r in regs])
            if all(lo <= f(c) <= hi for c in corners):
                continue
            wide = [r for r in set(regs) if R.hi[r] > R.lo[r]]
            if not wide:
                raise EdgecError(f"internal error: a shift over registers "
                                 f"{[R.names[r] for r in regs]} is out of range at the "
                                 "compile-time formats")
            for r in wide:
                R.lo[r] = min(R.lo[r] + 1, R.e0[r])
                R.hi[r] = max(R.hi[r] - 1, R.e0[r])
            changed = True


def master_bound(cbits: int, hi_copy: int, e_master: int) -> int:
    """SGD's mbound: the master may reach the coarsest format its copy can take."""
    return min(2**31 - 1, ((1 << (cbits - 1)) - 1) << max(0, hi_copy - e_master))
