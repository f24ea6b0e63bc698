"""``add``: a residual add of two forward values -> ``add`` (``grad: False``); the sum of
two partial errors of one forward value -> ``add`` (``grad: True``, ``<base>.dsum``)."""
from __future__ import annotations

import torch

from edgec.compiler.frontend.aten.context import (AtenCall, Desc, ValueInfo, emit, is_grad,
                                                  shape_of)

_SAME_SHAPE = " (only tensor + tensor of the same shape)"


def _sum_of_errors(c: AtenCall, a: Desc, b: Desc) -> str:
    """Partial errors of one forward value: attributed to the earliest-produced one."""
    ctx = c.ctx
    order = {n.outputs[0]: i for i, n in enumerate(ctx.g.nodes)}
    fv = min((ctx.info[a.name].grad_of, ctx.info[b.name].grad_of),
             key=lambda v: order.get(v, -1))
    finf = ctx.info.get(fv)
    fbase = finf.base if finf is not None else fv
    info = ValueInfo(finf.layer if finf else "forward", finf.loc if finf else c.loc, fbase,
                     grad_of=fv)
    return emit(ctx, "add", [a.name, b.name], ctx.g.fresh(f"{fbase}.dsum"),
                shape_of(ctx, a.name), {"grad": True}, info)


def convert_add(c: AtenCall) -> Desc:
    ctx, args = c.ctx, c.args
    ok = (len(args) == 2 and all(isinstance(a, torch.fx.Node) for a in args)
          and c.fxn.kwargs.get("alpha", 1) == 1)
    if not ok:
        raise c.unsupported("add", _SAME_SHAPE)
    a, b = c.val(0), c.val(1)
    if a.kind != "val" or b.kind != "val" or a.T or b.T \
            or shape_of(ctx, a.name) != shape_of(ctx, b.name):
        raise c.unsupported("add", _SAME_SHAPE)
    if is_grad(ctx, a) and is_grad(ctx, b):
        out = _sum_of_errors(c, a, b)
    elif not is_grad(ctx, a) and not is_grad(ctx, b):
        info = c.forward_info("add")
        out = emit(ctx, "add", [a.name, b.name], f"{info.base}.out", shape_of(ctx, a.name),
                   {"grad": False}, info)
    else:
        raise c.unsupported("add", " (mixing a forward value and an error)")
    if c.op == "add_":
        c.env[args[0]] = Desc("val", out)
    return Desc("val", out)


HANDLERS = {"add": convert_add, "add_": convert_add}
