"""Squeeze-excitation gating: ``x * s`` with ``s`` of shape (N, C, 1, 1) -> ``chmul``; in
the backward, ``dy * s`` -> ``chmul`` (``grad: True``, the error of x) and ``sum(dy * x)``
over H, W -> ``chmul_ds`` (the error of s)."""
from __future__ import annotations

import torch

from edgec.compiler.frontend.aten.context import (AtenCall, Desc, emit, forward_of_grad,
                                                  grad_info, is_grad, shape_of)

_GATE = (" (only x[N, C, H, W] * s[N, C, 1, 1], a per-channel gate such as "
         "squeeze-excitation)")


def _is_gate(xs: tuple, ss: tuple) -> bool:
    return len(xs) >= 3 and len(ss) == len(xs) and ss[:2] == xs[:2] \
        and all(d == 1 for d in ss[2:]) and any(d != 1 for d in xs[2:])


def convert_mul(c: AtenCall) -> Desc:
    ctx = c.ctx
    if len(c.args) != 2 or not all(isinstance(a, torch.fx.Node) for a in c.args):
        raise c.unsupported("mul", _GATE)
    a, b = c.val(0), c.val(1)
    if a.kind != "val" or b.kind != "val" or a.T or b.T:
        raise c.unsupported("mul", _GATE)
    sa, sb = shape_of(ctx, a.name), shape_of(ctx, b.name)
    ga, gb = is_grad(ctx, a), is_grad(ctx, b)
    if ga and gb:
        raise c.unsupported("mul", " (of two errors)")
    if ga or gb:
        dy, v = (a, b) if ga else (b, a)
        return _backward(c, dy, v)
    if _is_gate(sb, sa):
        a, b, sa, sb = b, a, sb, sa
    if not _is_gate(sa, sb):
        raise c.unsupported("mul", _GATE)
    info = c.forward_info("chmul", "gate")
    return Desc("val", emit(ctx, "chmul", [a.name, b.name], f"{info.base}.out", sa,
                            {"grad": False}, info))


def _backward(c: AtenCall, dy: Desc, v: Desc) -> Desc:
    """dy * s: the error of x; dy * x: the products whose sum over H, W (``sum``) is the
    error of s."""
    ctx = c.ctx
    fnode, finf = forward_of_grad(ctx, dy.name, c.op)
    if fnode.op != "chmul" or v.name not in fnode.inputs:
        raise c.unsupported("mul", _GATE)
    x, s = fnode.inputs
    if v.name == s:
        out = emit(ctx, "chmul", [dy.name, s], ctx.g.fresh(f"{finf.base}.dx"),
                   shape_of(ctx, x), {"grad": True}, grad_info(finf, x))
        return Desc("val", out)
    return Desc("gateprod", dy.name, data=(fnode, finf))


def convert_gate_sum(c: AtenCall, d: Desc) -> Desc:
    """``sum`` over H, W (keepdim) of dy * x -> ``chmul_ds``, the error of the gate."""
    fnode, finf = d.data
    x, s = fnode.inputs
    nd = len(shape_of(c.ctx, x))
    dims = sorted(int(k) % nd for k in c.args[1]) if len(c.args) > 1 else []
    keep = bool(c.args[2]) if len(c.args) > 2 else bool(c.fxn.kwargs.get("keepdim", False))
    if dims != list(range(2, nd)) or not keep:
        raise c.unsupported("sum", _GATE)
    out = emit(c.ctx, "chmul_ds", [d.name, x], c.ctx.g.fresh(f"{finf.base}.ds"),
               shape_of(c.ctx, s), {}, grad_info(finf, s))
    return Desc("val", out)


HANDLERS = {"mul": convert_mul}
