"""Graph IR: the training step as a flat SSA list of edgec ops.

One data structure serves every graph-level stage:

* the frontend emits a *float training graph* (dtype ``f32`` everywhere, no ``exp``),
* the mask pass inserts ``wview`` nodes and compacts activation shapes,
* the quantize pass assigns fixed-point formats (dtype ``i8``/``i32`` plus a power-of-two
  exponent ``exp``: value = q * 2**exp) and rounding attributes,
* the update pass appends ``sgd`` nodes.

The reference interpreter (``compiler/reference.py``) executes the quantized graph; the
backend lowers it to loop nests and instructions.  The op set is the registry
``ops.REGISTRY`` (``OPS`` is its arity view), described in docs/ir.md; every op's
attributes are plain Python data (ints, tuples, lists, strings) so that the graph prints
and compares structurally.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .ops import REGISTRY


# op name -> (number of inputs (min, max), number of outputs, required attributes): a view
# of the op registry (ops.py), which also documents each op
OPS: dict[str, tuple[tuple[int, int], int | tuple[int, int], tuple[str, ...]]] = {
    name: (d.inputs, d.outputs, d.attrs) for name, d in REGISTRY.items()}


@dataclass
class Value:
    name: str
    shape: tuple[int, ...]
    dtype: str = "f32"          # f32 | i8 | i32
    exp: int | None = None      # fixed point: real = q * 2**exp


@dataclass
class Node:
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    layer: str | None = None    # module name from model.named_modules(), e.g. "features.3"
    loc: str | None = None      # "model.py:17" source line the op came from


@dataclass
class Param:
    name: str                   # as in model.named_parameters(), e.g. "conv1.weight"
    value: str                  # graph value holding its current (compute) copy
    shape: tuple[int, ...]
    module: str                 # owning module name, e.g. "conv1"
    kind: str                   # one of PARAM_KINDS
    trainable: bool = True

    @property
    def is_bias(self) -> bool:
        """Biases (and the BatchNorm shift) live at the accumulator exponent."""
        return self.kind in ("bias", "bn_shift", "bn_mean", "teacher_bias")

    @property
    def is_const(self) -> bool:
        """Frozen constants derived from the model by the frontend, not model parameters."""
        return self.kind in CONST_KINDS


# weight | bias: model parameters;  bn_scale | bn_shift: a BatchNorm's frozen normalisation
# (1/sqrt(var+eps), -mean/sqrt(var+eps));  bn_mean: -mean as the frozen bias of a bias-free
# conv feeding the BatchNorm (which then has no shift);  avg: an average pool's weight;
# teacher | teacher_bias: the pretrained value of a trainable weight / bias, frozen, for the
# teacher's copy of the forward (compiler/passes/teacher.py; named "teacher:<param>")
CONST_KINDS = ("bn_scale", "bn_shift", "bn_mean", "avg", "teacher", "teacher_bias")
PARAM_KINDS = ("weight", "bias") + CONST_KINDS


@dataclass
class Graph:
    values: dict[str, Value] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)      # ["x", "labels"]
    params: dict[str, Param] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)  # role -> value, e.g. "logits"
    consts: dict[str, list[int]] = field(default_factory=dict)  # e.g. softmax LUT
    meta: dict[str, Any] = field(default_factory=dict)

    # -- construction helpers --
    def add_value(self, name: str, shape, dtype: str = "f32", exp: int | None = None) -> Value:
        if name in self.values:
            raise ValueError(f"value {name!r} defined twice")
        v = Value(name, tuple(int(s) for s in shape), dtype, exp)
        self.values[name] = v
        return v

    def fresh(self, base: str) -> str:
        if base not in self.values:
            return base
        i = 1
        while f"{base}.{i}" in self.values:
            i += 1
        return f"{base}.{i}"

    def add_node(self, op: str, inputs, outputs, attrs=None, layer=None, loc=None,
                 index: int | None = None) -> Node:
        n = Node(op, list(inputs), list(outputs), dict(attrs or {}), layer, loc)
        if index is None:
            self.nodes.append(n)
        else:
            self.nodes.insert(index, n)
        return n

    # -- queries --
    def producer(self, value: str) -> Node | None:
        for n in self.nodes:
            if value in n.outputs:
                return n
        return None

    def users(self, value: str) -> list[Node]:
        return [n for n in self.nodes if value in n.inputs]

    def param_of_value(self, value: str) -> Param | None:
        for p in self.params.values():
            if p.value == value:
                return p
        return None

    def remove_dead(self) -> list[Node]:
        """Drop every node that does not contribute to an output; returns the dropped."""
        live = set(self.outputs.values())
        keep, dropped = [], []
        for n in reversed(self.nodes):
            if any(o in live for o in n.outputs):
                keep.append(n)
                live.update(n.inputs)
            else:
                dropped.append(n)
        keep.reverse()
        self.nodes = keep
        used = set(live) | set(self.inputs) | {p.value for p in self.params.values()}
        for n in keep:
            used.update(n.outputs)
        self.values = {k: v for k, v in self.values.items() if k in used}
        dropped.reverse()
        return dropped

    def verify(self) -> None:
        """Structural checks: known ops, arity, SSA, defined-before-use, attrs present."""
        defined = set(self.inputs) | {p.value for p in self.params.values()}
        defined |= {v for v in self.values if v.startswith(("master:", "mom:"))}
        for i, n in enumerate(self.nodes):
            where = f"node {i} ({n.op}{' in ' + n.layer if n.layer else ''})"
            if n.op not in OPS:
                raise ValueError(f"{where}: unknown op")
            (lo, hi), nout, req = OPS[n.op]
            if not lo <= len(n.inputs) <= hi:
                raise ValueError(f"{where}: expects {lo}..{hi} inputs, has {len(n.inputs)}")
            nmin, nmax = (nout, nout) if isinstance(nout, int) else nout
            if not nmin <= len(n.outputs) <= nmax:
                raise ValueError(f"{where}: wrong number of outputs")
            for a in req:
                if a not in n.attrs:
                    raise ValueError(f"{where}: missing attribute {a!r}")
            for v in n.inputs:
                if v not in self.values:
                    raise ValueError(f"{where}: input {v!r} has no value")
                if v not in defined:
                    raise ValueError(f"{where}: input {v!r} used before it is defined")
            for v in n.outputs:
                if v not in self.values:
                    raise ValueError(f"{where}: output {v!r} has no value")
                if v in defined and n.op != "sgd":
                    raise ValueError(f"{where}: output {v!r} defined twice")
                defined.add(v)
