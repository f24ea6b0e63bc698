"""Views and reshapes: a flatten to (N, features) -> ``reshape``; in the backward, the
error viewed back to the flatten's input shape -> ``reshape`` (``<base>.dx``)."""
from __future__ import annotations

from edgec.isa.errors import EdgecError
from edgec.compiler.frontend.aten.context import (AtenCall, Desc, emit, forward_of_grad,
                                                  grad_info, shape_of)


def convert_view(c: AtenCall) -> Desc:
    ctx, op = c.ctx, c.op
    xd = c.val(0)
    if xd.kind != "val" or xd.T:
        raise c.unsupported()
    tgt = tuple(int(s) for s in c.fxn.meta["val"].shape)
    src = shape_of(ctx, xd.name)
    if tgt == src:
        return xd
    inf = ctx.info.get(xd.name)
    if inf is not None and inf.grad_of is not None:
        # backward of a forward reshape: dy viewed back to the reshape's input shape
        fnode, finf = forward_of_grad(ctx, xd.name, op)
        if fnode.op != "reshape" or shape_of(ctx, fnode.inputs[0]) != tgt:
            raise EdgecError(f"internal error: unexpected backward view {src}->{tgt}")
        out = emit(ctx, "reshape", [xd.name], f"{finf.base}.dx", tgt, {"shape": tgt},
                   grad_info(finf, fnode.inputs[0]))
        return Desc("val", out)
    if len(tgt) != 2 or tgt[0] != ctx.n or len(src) < 2 or src[0] != ctx.n:
        raise c.unsupported(op, f" from {src} to {tgt} (only flatten to (N, features))")
    info = c.forward_info("reshape", "flatten")
    out = emit(ctx, "reshape", [xd.name], f"{info.base}.out", tgt, {"shape": tgt}, info)
    return Desc("val", out)


HANDLERS = {op: convert_view for op in ("view", "reshape", "_unsafe_view", "flatten")}
