"""Graph IR: the training step as a flat SSA list of edgec ops.

One data structure serves every graph-level stage:

* the frontend emits a *float training graph* (dtype ``f32`` everywhere, no ``exp``),
* the mask pass inserts ``wview`` nodes and compacts activation shapes,
* the quantize pass assigns fixed-point formats (dtype ``i8``/``i32`` plus a power-of-two
  exponent ``exp``: value = q * 2**exp) and rounding attributes,
* the update pass appends ``sgd`` nodes.

The reference interpreter (``compiler/reference.py``) executes the quantized graph; the
backend lowers it to loop nests and instructions.  The op set is listed in ``OPS`` and
described in docs/ir.md; every op's attributes are plain Python data (ints, tuples, lists,
strings) so that the graph prints and compares structurally.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


# op name -> (number of inputs (min, max), number of outputs, required attributes)
OPS: dict[str, tuple[tuple[int, int], int, tuple[str, ...]]] = {
    # ---- forward ----
    # x[N,C,H,W], w[O,C/groups,KH,KW] (, b[O]) -> y[N,O,OH,OW]   (attr groups, default 1;
    # BatchNorm and average pooling are depthwise convs with groups = C)
    "conv": ((2, 3), 1, ("stride", "pad")),
    # x[N,F], w[O,F] (, b[O]) -> y[N,O]
    "linear": ((2, 3), 1, ()),
    "relu": ((1, 1), 1, ()),
    # x -> clamp(x, lo, hi)   (ReLU6 / Hardtanh; lo, hi are the real bounds)
    "hardtanh": ((1, 1), 1, ("lo", "hi")),
    # a, b -> a + b (same shape): residual connections; with grad=true, the sum of two
    # back-propagated errors of one forward value
    "add": ((2, 2), 1, ("grad",)),
    # x[N,C,H,W] -> y; floor mode, -inf padding, dilation 1
    "maxpool": ((1, 1), 1, ("kernel", "stride", "pad")),
    # row-major view, e.g. flatten [N,C,H,W] -> [N,C*H*W]
    "reshape": ((1, 1), 1, ("shape",)),
    # ---- loss ----
    # z[N,K], labels[N] -> dz[N,K] = (softmax(z) - onehot(labels)) / N   (mean CE gradient);
    # with attr target = pseudo | kd the second operand is the teacher's logits t[N,K]
    # (compiler/passes/teacher.py): pseudo: onehot(argmax t), rows whose teacher confidence
    # is below attr threshold get 0; kd: softmax(z/T) - softmax(t/T), T = attr temp
    "loss_grad": ((2, 2), 1, ()),
    # ---- backward ----
    # dy[N,O,OH,OW], w[O,C,KH,KW] -> dx[N,C,H,W]   (error back-propagation, EB)
    "conv_eb": ((2, 2), 1, ("stride", "pad", "in_shape")),
    # dy[N,O,OH,OW], x[N,C,H,W] -> dw[O,C,KH,KW]   (weight gradient, WG)
    "conv_wg": ((2, 2), 1, ("stride", "pad", "kernel")),
    # dy[N,O], w[O,F] -> dx[N,F]
    "linear_eb": ((2, 2), 1, ()),
    # dy[N,O], x[N,F] -> dw[O,F]
    "linear_wg": ((2, 2), 1, ()),
    # dy[N,O,...] -> db[O]  (sum over every dim but 1)
    "bias_grad": ((1, 1), 1, ()),
    # dy, y -> dy where y > 0 else 0   (y is relu's OUTPUT)
    "relu_bwd": ((2, 2), 1, ()),
    # dy, y -> dy where lo < y < hi else 0   (y is hardtanh's OUTPUT)
    "hardtanh_bwd": ((2, 2), 1, ("lo", "hi")),
    # dy[N,C,OH,OW], x[N,C,H,W] -> dx[N,C,H,W]  (x is maxpool's INPUT)
    "maxpool_bwd": ((2, 2), 1, ("kernel", "stride", "pad")),
    # ---- masks and update (inserted by passes) ----
    # p (full PyTorch shape) -> compacted view: rows out_idx (dim 0), and along dim 1 the
    # blocks in_idx of in_block consecutive elements (in_block = H*W for a linear after a
    # flatten, 1 otherwise).  None = keep all.
    "wview": ((1, 1), 1, ("out_idx", "in_idx", "in_block")),
    # p, g -> p'  (float graph);  p8, master, g -> p8', master'  (quantized graph);
    # with attr mom (momentum / weight decay): p8, master, g, mom -> p8', master', mom'.
    # The update writes through the same view as the matching wview (attrs copied).
    "sgd": ((2, 4), (1, 3), ("lr", "out_idx", "in_idx", "in_block")),
    # x[N,C,...], b[C], q[C,1,1,1] -> b', q'  (--adapt-bn): BatchNorm constants from the
    # statistics of the BN input x: b is the producing conv's bias (mode 0, the mean is
    # folded in) or the BN shift (mode 1), q the int8 scale.  Rows out_idx of b and q
    # (tables b_tab, out_tab) are written in place.
    "bn_adapt": ((3, 3), 2, ("mode", "cnt", "d", "p", "eps", "m", "out_idx", "out_tab",
                             "b_tab")),
}


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
