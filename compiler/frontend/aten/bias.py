"""``sum`` of an error over every dimension but the channels: the bias gradient of the
conv or linear that produced the forward value -> ``bias_grad`` (a sum over H, W of a
gate's products: aten/gate.py)."""
from __future__ import annotations

from edgec.compiler.frontend.aten.context import (AtenCall, Desc, emit, forward_of_grad,
                                                  grad_info, shape_of)
from edgec.compiler.frontend.aten.gate import convert_gate_sum


def convert_bias_grad(c: AtenCall) -> Desc:
    ctx, args = c.ctx, c.args
    dy = c.val(0)
    if dy.kind == "gateprod":           # sum over H, W of dy * x: a gate's error
        return convert_gate_sum(c, dy)
    idy = ctx.info.get(dy.name)
    if dy.kind == "val" and not dy.T and idy is not None and idy.grad_of:
        fnode, finf = forward_of_grad(ctx, dy.name, c.op)
        nd = len(shape_of(ctx, dy.name))
        dims = sorted(int(d) % nd for d in (args[1] if len(args) > 1 else range(nd)))
        if fnode.op in ("linear", "conv") and len(fnode.inputs) == 3 \
                and dims == [d for d in range(nd) if d != 1]:
            b = fnode.inputs[2]
            out = emit(ctx, "bias_grad", [dy.name], ctx.g.fresh(f"{finf.base}.db"),
                       shape_of(ctx, b), {}, grad_info(finf, b))
            return Desc("val", out)
    raise c.unsupported("sum")


HANDLERS = {"sum": convert_bias_grad}
