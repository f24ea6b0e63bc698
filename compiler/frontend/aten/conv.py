"""Convolutions: ``convolution`` -> ``conv``; ``convolution_backward`` -> ``conv_eb``
(input error), ``conv_wg`` (weight gradient), ``bias_grad``."""
from __future__ import annotations

from edgec.compiler.frontend.aten.context import (AtenCall, Desc, claim_params, emit,
                                                  forward_matching, grad_info, lazy_tuple, pair,
                                                  shape_of)


def convert_conv(c: AtenCall) -> Desc:
    ctx, args = c.ctx, c.args
    xd, wd = c.val(0), c.val(1)
    bd = c.val(2) if args[2] is not None else None
    stride, pad, dil, transposed, outpad, groups = args[3:9]
    detail = []
    if transposed:
        detail.append("transposed convolution")
    if any(int(d) != 1 for d in dil):
        detail.append(f"dilation={tuple(dil)}")
    if len(stride) != 2 or xd.kind != "val" or len(shape_of(ctx, xd.name)) != 4:
        detail.append("only 2-D convolutions on (N, C, H, W)")
    if detail:
        raise c.unsupported("conv", " with " + ", ".join(detail))
    if wd.name not in ctx.param_module or (bd is not None and bd.name not in ctx.param_module):
        raise c.unsupported("conv", " with non-parameter weights")
    claim_params(ctx, [wd.name] + ([bd.name] if bd is not None else []), c.loc)
    info = c.forward_info("conv")
    ins = [xd.name, wd.name] + ([bd.name] if bd is not None else [])
    shape = tuple(c.fxn.meta["val"].shape)
    attrs = {"stride": pair(stride), "pad": pair(pad)}
    if int(groups) != 1:
        attrs["groups"] = int(groups)
    return Desc("val", emit(ctx, "conv", ins, f"{info.base}.out", shape, attrs, info))


def convert_conv_backward(c: AtenCall) -> Desc:
    """A tuple (dx, dw, db) whose members are emitted when read (getitem)."""
    ctx = c.ctx
    dy, xd, wd = c.val(0), c.val(1), c.val(2)
    fnode, finf = forward_matching(ctx, c.op, lambda n: n.op == "conv"
                                   and n.inputs[:2] == [xd.name, wd.name])
    st, pd = fnode.attrs["stride"], fnode.attrs["pad"]
    grp = {"groups": fnode.attrs["groups"]} if "groups" in fnode.attrs else {}

    def member(i):
        if i == 0:
            xs = shape_of(ctx, xd.name)
            return emit(ctx, "conv_eb", [dy.name, wd.name], f"{finf.base}.dx", xs,
                        {"stride": st, "pad": pd, "in_shape": xs, **grp},
                        grad_info(finf, xd.name))
        if i == 1:
            ws = shape_of(ctx, wd.name)
            return emit(ctx, "conv_wg", [dy.name, xd.name], ctx.g.fresh(f"{finf.base}.dw"), ws,
                        {"stride": st, "pad": pd, "kernel": tuple(ws[2:]), **grp},
                        grad_info(finf, wd.name))
        if len(fnode.inputs) < 3:
            return None
        b = fnode.inputs[2]
        return emit(ctx, "bias_grad", [dy.name], ctx.g.fresh(f"{finf.base}.db"),
                    shape_of(ctx, b), {}, grad_info(finf, b))
    return lazy_tuple(member)


HANDLERS = {
    "convolution": convert_conv,
    "convolution_backward": convert_conv_backward,
}
