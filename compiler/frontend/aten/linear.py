"""Matrix products: ``addmm`` / ``mm`` of an input and a transposed weight parameter ->
``linear``; in the backward, ``mm`` -> ``linear_eb`` (dy @ W) or ``linear_wg``
(dy^T @ x, or x^T @ dy giving the transposed gradient)."""
from __future__ import annotations

from edgec.isa.errors import EdgecError
from edgec.compiler.frontend.aten.context import (AtenCall, Desc, claim_params, desc_of,
                                                  emit, forward_of_grad, grad_info, is_grad,
                                                  shape_of)


def convert_linear(c: AtenCall) -> Desc:
    """``addmm(b, x, W^T)`` or ``mm(x, W^T)`` in the forward."""
    ctx = c.ctx
    if c.op == "addmm":
        bd, xd, wd = (desc_of(c.env, a) for a in c.args[:3])
        if c.fxn.kwargs.get("beta", 1) != 1 or c.fxn.kwargs.get("alpha", 1) != 1:
            raise c.unsupported("addmm")
    else:
        bd = None
        xd, wd = c.val(0), c.val(1)
    ok = (xd.kind == "val" and not xd.T and wd.kind == "val" and wd.T
          and wd.name in ctx.param_module
          and (bd is None or (bd.kind == "val" and bd.name in ctx.param_module)))
    if not ok:
        raise c.unsupported("matmul", " (only nn.Linear / F.linear with parameters)")
    claim_params(ctx, [wd.name] + ([bd.name] if bd is not None else []), c.loc)
    info = c.forward_info("linear")
    ins = [xd.name, wd.name] + ([bd.name] if bd is not None else [])
    shape = tuple(c.fxn.meta["val"].shape)
    return Desc("val", emit(ctx, "linear", ins, f"{info.base}.out", shape, {}, info))


def convert_linear_backward(c: AtenCall) -> Desc:
    """``mm`` with an error operand: the input error or the weight gradient of a linear."""
    ctx, op = c.ctx, c.op
    a, b = c.val(0), c.val(1)
    ia = ctx.info.get(a.name)
    # EB: dy[N,O] @ W[O,F]
    if ia is not None and ia.grad_of and not a.T and b.name in ctx.param_module and not b.T:
        fnode, finf = forward_of_grad(ctx, a.name, op)
        if fnode.op != "linear" or fnode.inputs[1] != b.name:
            raise EdgecError("internal error: unexpected mm in the backward")
        xin = fnode.inputs[0]
        out = emit(ctx, "linear_eb", [a.name, b.name], f"{finf.base}.dx",
                   shape_of(ctx, xin), {}, grad_info(finf, xin))
        return Desc("val", out)
    # WG: dy^T[O,N] @ x[N,F] -> dW[O,F];  x^T[F,N] @ dy[N,O] -> dW^T
    for dy, xx, transposed in ((a, b, False), (b, a, True)):
        idy = ctx.info.get(dy.name)
        if idy is not None and idy.grad_of and dy.T != transposed and xx.T == transposed:
            fnode, finf = forward_of_grad(ctx, dy.name, op)
            if fnode.op != "linear" or fnode.inputs[0] != xx.name:
                continue
            w = fnode.inputs[1]
            out = emit(ctx, "linear_wg", [dy.name, xx.name], ctx.g.fresh(f"{finf.base}.dw"),
                       shape_of(ctx, w), {}, grad_info(finf, w))
            return Desc("val", out, transposed)
    raise c.unsupported("matmul", " (only nn.Linear / F.linear with parameters)")


def convert_mm(c: AtenCall) -> Desc:
    if not is_grad(c.ctx, c.val(0)) and not is_grad(c.ctx, c.val(1)):
        return convert_linear(c)
    return convert_linear_backward(c)


HANDLERS = {
    "addmm": convert_linear,
    "mm": convert_mm,
}
