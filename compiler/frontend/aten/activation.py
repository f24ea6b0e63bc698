"""Activations: ``relu`` -> ``relu`` (backward ``threshold_backward`` -> ``relu_bwd``),
``hardtanh`` (ReLU6) -> ``hardtanh`` (backward -> ``hardtanh_bwd``).  The in-place forms
rebind their input tensor to the result."""
from __future__ import annotations

from edgec.isa.errors import EdgecError
from edgec.compiler.frontend.aten.context import (AtenCall, Desc, arg_of, emit,
                                                  forward_matching, grad_info, shape_of)


def convert_relu(c: AtenCall) -> Desc:
    xd = c.val(0)
    if xd.kind != "val" or xd.T:
        raise c.unsupported("relu")
    info = c.forward_info("relu")
    out = emit(c.ctx, "relu", [xd.name], f"{info.base}.out", shape_of(c.ctx, xd.name), {},
               info)
    if c.op == "relu_":
        c.env[c.args[0]] = Desc("val", out)      # the input tensor was overwritten
    return Desc("val", out)


def convert_relu_backward(c: AtenCall) -> Desc:
    """``threshold_backward(dy, y, 0)``."""
    ctx = c.ctx
    dy, y = c.val(0), c.val(1)
    if float(c.args[2]) != 0.0:
        raise EdgecError("internal error: unexpected threshold_backward")
    fnode, finf = forward_matching(ctx, c.op, lambda n: n.op == "relu"
                                   and n.outputs[0] == y.name)
    out = emit(ctx, "relu_bwd", [dy.name, y.name], f"{finf.base}.dx",
               shape_of(ctx, fnode.inputs[0]), {}, grad_info(finf, fnode.inputs[0]))
    return Desc("val", out)


def convert_hardtanh(c: AtenCall) -> Desc:
    xd = c.val(0)
    if xd.kind != "val" or xd.T:
        raise c.unsupported("hardtanh")
    lo = float(arg_of(c.fxn, 1, "min_val", -1.0))
    hi = float(arg_of(c.fxn, 2, "max_val", 1.0))
    info = c.forward_info("hardtanh")
    out = emit(c.ctx, "hardtanh", [xd.name], f"{info.base}.out", shape_of(c.ctx, xd.name),
               {"lo": lo, "hi": hi}, info)
    if c.op == "hardtanh_":
        c.env[c.args[0]] = Desc("val", out)
    return Desc("val", out)


def convert_hardtanh_backward(c: AtenCall) -> Desc:
    ctx = c.ctx
    dy, xd = c.val(0), c.val(1)
    fnode, finf = forward_matching(ctx, c.op, lambda n: n.op == "hardtanh"
                                   and xd.name in (n.inputs[0], n.outputs[0]))
    out = emit(ctx, "hardtanh_bwd", [dy.name, fnode.outputs[0]], f"{finf.base}.dx",
               shape_of(ctx, fnode.inputs[0]), dict(fnode.attrs),
               grad_info(finf, fnode.inputs[0]))
    return Desc("val", out)


HANDLERS = {
    "relu": convert_relu,
    "relu_": convert_relu,
    "threshold_backward": convert_relu_backward,
    "hardtanh": convert_hardtanh,
    "hardtanh_": convert_hardtanh,
    "hardtanh_backward": convert_hardtanh_backward,
}
