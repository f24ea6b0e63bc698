"""Views and reshapes: a flatten to (N, features) and squeeze / unsqueeze / view that only
add or drop trailing size-1 dims of an (N, C, ...) value (a pooled (N, C, 1, 1) and its
(N, C) form) -> ``reshape``; in the backward, the error viewed back to the shape of the
forward value it is the gradient of -> ``reshape`` (``<base>.dx``)."""
from __future__ import annotations

from edgec.isa.errors import EdgecError
from edgec.compiler.frontend.aten.context import (AtenCall, Desc, emit, forward_of_grad,
                                                  grad_info, shape_of)


def _unit_tail(a: tuple, b: tuple) -> bool:
    """a and b are one (N, C) with different trailing size-1 dims."""
    return len(a) >= 2 and len(b) >= 2 and a[:2] == b[:2] \
        and all(d == 1 for d in a[2:] + b[2:])


def _backward_view(c: AtenCall, xd: Desc, src: tuple, tgt: tuple) -> Desc:
    """An error viewed to ``tgt``: the gradient of the forward value of that shape found
    up the chain of forward reshapes from the value it is the gradient of."""
    ctx, op = c.ctx, c.op
    fnode, finf = forward_of_grad(ctx, xd.name, op)
    # a pool's own (N, C) view shares its base: its error is <base>.dview, the pool's .dx
    shared = getattr(ctx.info.get(fnode.inputs[0]), "base", None) == finf.base
    name = ctx.g.fresh(f"{finf.base}.dview") if shared else f"{finf.base}.dx"
    if fnode.op == "reshape" and shape_of(ctx, fnode.inputs[0]) == tgt:
        out = emit(ctx, "reshape", [xd.name], name, tgt, {"shape": tgt},
                   grad_info(finf, fnode.inputs[0]))
        return Desc("val", out)
    y = ctx.info[xd.name].grad_of
    while shape_of(ctx, y) != tgt and ctx.producer.get(y) is not None \
            and ctx.producer[y].op == "reshape":
        y = ctx.producer[y].inputs[0]
    if not _unit_tail(src, tgt):
        raise EdgecError(f"internal error: unexpected backward view {src}->{tgt}")
    if shape_of(ctx, y) != tgt:         # an intermediate (N, C, 1): still dy of y
        y = ctx.info[xd.name].grad_of
    out = emit(ctx, "reshape", [xd.name], ctx.g.fresh(f"{finf.base}.dview"), tgt,
               {"shape": tgt}, grad_info(finf, y))
    return Desc("val", out)


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
        return _backward_view(c, xd, src, tgt)
    flatten = len(tgt) == 2 and tgt[0] == ctx.n and len(src) >= 2 and src[0] == ctx.n
    if not flatten and not _unit_tail(src, tgt):
        raise c.unsupported(op, f" from {src} to {tgt} (only flatten to (N, features), or "
                                "adding / dropping trailing size-1 dims of (N, C, 1, 1))")
    info = c.forward_info("reshape", "flatten" if flatten else "view")
    out = emit(ctx, "reshape", [xd.name], f"{info.base}.out", tgt, {"shape": tgt}, info)
    return Desc("val", out)


HANDLERS = {op: convert_view for op in ("view", "reshape", "_unsafe_view", "flatten",
                                        "squeeze", "unsqueeze")}
