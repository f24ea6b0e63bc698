"""Export the QUANTIZED forward pass of a compiled step as an ONNX model (oracle 3).

The ONNX graph computes exactly the integer forward of docs/numerics.md section 4 with
onnxruntime's integer operators, so an outside engine can check the emulator bit for bit:

* input ``x``: the int8 quantized batch, ``q = sat8(round_half_even(x * 2**-e_x))``
  (``e_x`` is in the model's metadata as ``exp:x``);
* initializers ``param:<name>``: the int8 weight / int32 bias compute copies
  (``Compiled.graph.meta["init"]``) in their full PyTorch shape; a mask ``wview`` is a
  ``Gather`` with constant index tensors (rows on axis 0, kept column blocks on axis 1);
* conv / linear: ``ConvInteger`` / ``MatMulInteger`` (int8 x int8 -> int32), ``Add`` of the
  int32 bias, then the requantize shift in int64: for ``s > 0``
  ``floor((acc + 2**(s-1)) / 2**s)`` is computed as
  ``(acc + 2**(s-1) + 2**33) / 2**s - 2**(33-s)`` (the offset makes the dividend positive,
  so ONNX's truncating integer ``Div`` is a floor; exact for |acc| < 2**32); for ``s <= 0``
  a ``Mul`` by ``2**-s``; then ``Clip`` to the op's ``clamp`` bounds and ``Cast`` to int8
  (grouped/depthwise convs: ``ConvInteger`` with ``group``);
* add: both operands cast to int64 and aligned by ``Mul 2**sa``/``2**sb``, ``Add``, then
  the same requantize; relu/hardtanh: ``Clip`` on int8; maxpool: ``MaxPool`` on int8;
  reshape: ``Reshape``.

Outputs: every forward value of the graph, under its graph value name, int8; the
exponent of each is in the metadata (``exp:<value>``: real = q * 2**exp).
"""
from __future__ import annotations

import numpy as np

from edgec.isa.errors import EdgecError

from ..ir.graph import Graph
from ..ir.ops import REGISTRY as OP

OPSET = 13
_OFF = 33       # 2**33 > max |acc + 2**(s-1)|, and a multiple of 2**s for s <= 31


def forward_nodes(g: Graph):
    out = []
    for n in g.nodes:
        if OP[n.op].phase == "loss":
            break
        out.append(n)
    return out


def _view_indices(shape, attrs):
    rows = attrs.get("out_idx")
    cols = None
    if attrs.get("in_idx") is not None:
        blk = int(attrs.get("in_block") or 1)
        b = np.asarray(list(attrs["in_idx"]), dtype=np.int64)
        cols = (b[:, None] * blk + np.arange(blk, dtype=np.int64)[None, :]).reshape(-1)
    return (None if rows is None else np.asarray(list(rows), dtype=np.int64)), cols


class _Onnx:
    """The ONNX graph being built: nodes, initializers and fresh names."""

    def __init__(self, g: Graph):
        from onnx import TensorProto, helper, numpy_helper
        self.g, self.T, self.h, self.nh = g, TensorProto, helper, numpy_helper
        self.nodes, self.inits, self.counter = [], [], 0

    def tmp(self, base: str) -> str:
        self.counter += 1
        return f"_{self.counter}_{base}"

    def const(self, arr, base: str) -> str:
        nm = self.tmp(base)
        self.inits.append(self.nh.from_array(np.asarray(arr), nm))
        return nm

    def add(self, op, ins, outs, **attrs) -> None:
        self.nodes.append(self.h.make_node(op, ins, outs, name=self.tmp(op), **attrs))

    def requant(self, a64: str, s: int, clamp, o: str) -> None:
        """int64 accumulator -> int8: rshift nearest (floor via offset Div), clip, cast."""
        add, const, tmp = self.add, self.const, self.tmp
        if s > 0:
            t1, t2, t3 = tmp("rnd"), tmp("div"), tmp("shifted")
            add("Add", [a64, const(np.int64((1 << (s - 1)) + (1 << _OFF)), "round")], [t1])
            add("Div", [t1, const(np.int64(1 << s), "pow2")], [t2])
            add("Sub", [t2, const(np.int64(1 << (_OFF - s)), "offset")], [t3])
        elif s < 0:
            t3 = tmp("shifted")
            add("Mul", [a64, const(np.int64(1 << -s), "pow2")], [t3])
        else:
            t3 = a64
        c = tmp("sat")
        add("Clip", [t3, const(np.int64(clamp[0]), "lo"), const(np.int64(clamp[1]), "hi")], [c])
        add("Cast", [c], [o], to=self.T.INT8)


def _wview(b: _Onnx, n) -> None:
    o, src = n.outputs[0], n.inputs[0]
    rows, cols = _view_indices(b.g.values[src].shape, n.attrs)
    cur = src
    if rows is not None:
        nxt = o if cols is None else b.tmp("rows")
        b.add("Gather", [cur, b.const(rows, "out_idx")], [nxt], axis=0)
        cur = nxt
    if cols is not None:
        b.add("Gather", [cur, b.const(cols, "in_idx")], [o], axis=1)
    if rows is None and cols is None:
        b.add("Identity", [cur], [o])


def _mac(b: _Onnx, n) -> None:
    V, add, tmp, const = b.g.values, b.add, b.tmp, b.const
    x, w = n.inputs[0], n.inputs[1]
    acc = tmp("acc")
    if n.op == "conv":
        st, pd = n.attrs["stride"], n.attrs["pad"]
        add("ConvInteger", [x, w], [acc], strides=list(st),
            pads=[pd[0], pd[1], pd[0], pd[1]],
            kernel_shape=list(V[w].shape[2:]), group=int(n.attrs.get("groups", 1)))
    else:
        wt = tmp("wT")
        add("Transpose", [w], [wt], perm=[1, 0])
        add("MatMulInteger", [x, wt], [acc])
    if len(n.inputs) == 3:
        bias = n.inputs[2]
        if n.op == "conv":
            b4 = tmp("bias4")
            add("Reshape", [bias, const(np.array([1, -1, 1, 1], np.int64), "shape")], [b4])
            bias = b4
        acc2 = tmp("accb")
        add("Add", [acc, bias], [acc2])
        acc = acc2
    a64 = tmp("acc64")
    add("Cast", [acc], [a64], to=b.T.INT64)
    b.requant(a64, int(n.attrs["shift"]), n.attrs.get("clamp", (-127, 127)), n.outputs[0])


def _add(b: _Onnx, n) -> None:
    terms = []
    for v, sh in ((n.inputs[0], n.attrs["sa"]), (n.inputs[1], n.attrs["sb"])):
        t64 = b.tmp("add64")
        b.add("Cast", [v], [t64], to=b.T.INT64)
        if sh:
            t2 = b.tmp("aligned")
            b.add("Mul", [t64, b.const(np.int64(1 << sh), "pow2")], [t2])
            t64 = t2
        terms.append(t64)
    acc = b.tmp("sum")
    b.add("Add", terms, [acc])
    b.requant(acc, int(n.attrs["shift"]), n.attrs["clamp"], n.outputs[0])


def _clip(b: _Onnx, n) -> None:
    lo, hi = n.attrs["clamp"]
    b.add("Clip", [n.inputs[0], b.const(np.int8(lo), "lo"), b.const(np.int8(hi), "hi")],
          [n.outputs[0]])


def _maxpool(b: _Onnx, n) -> None:
    k, st, pd = n.attrs["kernel"], n.attrs["stride"], n.attrs["pad"]
    b.add("MaxPool", [n.inputs[0]], [n.outputs[0]], kernel_shape=list(k), strides=list(st),
          pads=[pd[0], pd[1], pd[0], pd[1]])


def _reshape(b: _Onnx, n) -> None:
    o = n.outputs[0]
    b.add("Reshape", [n.inputs[0], b.const(np.array(b.g.values[o].shape, np.int64), "shape")],
          [o])


def _chmul(b: _Onnx, n) -> None:
    terms = []
    for v in n.inputs:
        t64 = b.tmp("mul64")
        b.add("Cast", [v], [t64], to=b.T.INT64)
        terms.append(t64)
    acc = b.tmp("prod")
    b.add("Mul", terms, [acc])              # ONNX broadcasting: s is [N, C, 1, 1]
    b.requant(acc, int(n.attrs["shift"]), n.attrs["clamp"], n.outputs[0])


def _concat(b: _Onnx, n) -> None:
    b.add("Concat", list(n.inputs), [n.outputs[0]], axis=1)


def _slice(b: _Onnx, n) -> None:
    c0, c1 = int(n.attrs["c0"]), int(n.attrs["c1"])
    b.add("Slice", [n.inputs[0], b.const(np.array([c0], np.int64), "start"),
                    b.const(np.array([c1], np.int64), "stop"),
                    b.const(np.array([1], np.int64), "axis")], [n.outputs[0]])


#: one export rule per forward op (op registry stage ``onnx``)
ONNX_RULES = {
    "wview": _wview,
    "conv": _mac, "linear": _mac,
    "add": _add,
    "relu": _clip, "hardtanh": _clip,
    "maxpool": _maxpool,
    "reshape": _reshape,
    "concat": _concat, "slice": _slice,
    "chmul": _chmul,
}


def export_forward(g: Graph, name: str = "edgec_forward"):
    """ONNX ModelProto of the quantized forward of ``g`` (after mask + quantize passes)."""
    import onnx

    if "init" not in g.meta:
        raise EdgecError("export-onnx needs the quantized graph (run the quantize pass)")
    V = g.values
    init = g.meta["init"]
    b = _Onnx(g)
    T, h, nh = b.T, b.h, b.nh
    outputs, meta = [], {}
    have_init = set()
    for n in forward_nodes(g):
        for v in n.inputs:
            if v in init and v not in have_init:
                b.inits.append(nh.from_array(np.asarray(init[v]), v))
                have_init.add(v)
    onnx_dtype = {"i8": T.INT8, "i32": T.INT32}
    for n in forward_nodes(g):
        where = f"{n.loc or '?'}: layer {n.layer!r} ({n.op})"
        o = n.outputs[0]
        rule = ONNX_RULES.get(n.op)
        if rule is None:
            raise EdgecError(f"{where}: op has no ONNX export")
        rule(b, n)
        if OP[n.op].result == "view":
            continue
        if V[o].dtype not in onnx_dtype:
            raise EdgecError(f"{where}: value {o!r} is {V[o].dtype}, not quantized")
        outputs.append(h.make_tensor_value_info(o, onnx_dtype[V[o].dtype], list(V[o].shape)))
        meta[f"exp:{o}"] = str(V[o].exp)
        if n.loc:
            b.nodes[-1].doc_string = f"{n.loc} layer {n.layer}"
    meta["exp:x"] = str(V["x"].exp)
    xin = h.make_tensor_value_info("x", T.INT8, list(V["x"].shape))
    graph = h.make_graph(b.nodes, name, [xin], outputs, initializer=b.inits,
                         doc_string="edgec quantized forward: input x is the int8 batch "
                                    f"q = sat8(round_half_even(x * 2**{-V['x'].exp})); "
                                    "outputs are int8 with real = q * 2**exp (metadata)")
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)],
                         producer_name="edgec")
    model.ir_version = 8
    h.set_model_props(model, meta)
    onnx.checker.check_model(model, full_check=True)
    return model
