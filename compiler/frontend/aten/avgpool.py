"""Average pooling (``avg_pool2d``, ``_adaptive_avg_pool2d``, ``mean`` over H and W) as a
depthwise ``conv`` with a constant weight (kind ``avg``); every backward form (the
``*_backward`` ops, and ``expand`` then ``div`` for ``mean``) -> ``conv_eb``."""
from __future__ import annotations

import torch

from edgec.isa.errors import EdgecError
from edgec.compiler.ir.graph import Node
from edgec.compiler.frontend.windows import ceil_is_floor
from edgec.compiler.frontend.aten.context import (AtenCall, Desc, ValueInfo, add_const_param,
                                                  arg_of, emit, forward_matching,
                                                  forward_of_grad, grad_info, is_grad, pair,
                                                  shape_of)


def _avg_pool2d_window(c: AtenCall):
    """(kernel, stride, pad) of ``avg_pool2d``."""
    fxn = c.fxn
    kernel = pair(arg_of(fxn, 1, "kernel_size", None))
    stride = arg_of(fxn, 2, "stride", [])
    stride = pair(stride) if stride not in ([], (), None) else kernel
    pad = pair(arg_of(fxn, 3, "padding", 0))
    detail = []
    hw = shape_of(c.ctx, c.val(0).name)[2:]
    if bool(arg_of(fxn, 4, "ceil_mode", False)) and not ceil_is_floor(hw, kernel, stride, pad):
        detail.append(f"ceil_mode=True on a {hw[0]}x{hw[1]} input, where it adds a partial "
                      "window (only where ceil and floor mode agree)")
    if not bool(arg_of(fxn, 5, "count_include_pad", True)) and pad != (0, 0):
        detail.append("count_include_pad=False")
    if arg_of(fxn, 6, "divisor_override", None) is not None:
        detail.append("divisor_override")
    if detail:
        raise c.unsupported("avgpool", " with " + ", ".join(detail))
    return kernel, stride, pad


def _mean_window(c: AtenCall, H: int, W: int):
    """(kernel, stride, pad, keepdim) of ``mean`` over H and W."""
    dims = sorted(int(d) % 4 for d in arg_of(c.fxn, 1, "dim", []))
    if dims != [2, 3] or c.fxn.kwargs.get("dtype") not in (None, torch.float32):
        raise c.unsupported("mean", " (only the mean over H and W of (N, C, H, W))")
    return (H, W), (H, W), (0, 0), bool(arg_of(c.fxn, 2, "keepdim", False))


def _adaptive_window(c: AtenCall, H: int, W: int):
    """(kernel, stride, pad) of ``_adaptive_avg_pool2d`` to a divisor of the input size."""
    oh, ow = pair(c.args[1])
    if H % oh or W % ow:
        raise c.unsupported("adaptive_avg_pool2d", f" from {H}x{W} to {oh}x{ow} "
                            "(the input size must be a multiple of the output size)")
    kernel = (H // oh, W // ow)
    return kernel, kernel, (0, 0)


def convert_avgpool(c: AtenCall) -> Desc:
    ctx, op = c.ctx, c.op
    xd = c.val(0)
    xs = shape_of(ctx, xd.name) if xd.kind == "val" else ()
    if len(xs) != 4 or xd.T:
        raise c.unsupported(op, " on input that is not (N, C, H, W)")
    N, C, H, W = xs
    keep4 = True
    if op == "avg_pool2d":
        kernel, stride, pad = _avg_pool2d_window(c)
    elif op == "mean":
        kernel, stride, pad, keep4 = _mean_window(c, H, W)
    else:
        kernel, stride, pad = _adaptive_window(c, H, W)
    info = c.forward_info("conv", "avgpool")
    layer, base = info.layer, info.base
    wv = add_const_param(ctx, f"{base}:avg", "avg", layer, (C, 1, *kernel))
    oshape = (N, C, (H + 2 * pad[0] - kernel[0]) // stride[0] + 1,
              (W + 2 * pad[1] - kernel[1]) // stride[1] + 1)
    out = emit(ctx, "conv", [xd.name, wv], f"{base}.out" if keep4 else f"{base}.pool",
               oshape, {"stride": stride, "pad": pad, "groups": C}, info)
    if not keep4:
        out = emit(ctx, "reshape", [out], f"{base}.out", (N, C), {"shape": (N, C)}, info)
    return Desc("val", out)


def _avg_input_error(c: AtenCall, dy: Desc, fnode: Node, finf: ValueInfo) -> Desc:
    xs = shape_of(c.ctx, fnode.inputs[0])
    at = {k: fnode.attrs[k] for k in ("stride", "pad", "groups")}
    return Desc("val", emit(c.ctx, "conv_eb", [dy.name, fnode.inputs[1]], f"{finf.base}.dx",
                            xs, {**at, "in_shape": xs}, grad_info(finf, fnode.inputs[0])))


def _is_avg(c: AtenCall, n: Node) -> bool:
    p = c.ctx.g.param_of_value(n.inputs[1]) if n.op == "conv" else None
    return p is not None and p.kind == "avg"


def convert_avgpool_backward(c: AtenCall) -> Desc:
    dy, xd = c.val(0), c.val(1)
    fnode, finf = forward_matching(c.ctx, c.op, lambda n: _is_avg(c, n)
                                   and n.inputs[0] == xd.name)
    return _avg_input_error(c, dy, fnode, finf)


def convert_mean_backward_expand(c: AtenCall) -> Desc:
    """The backward of ``mean``, step 1: ``expand`` of the error (kept as ``meanexp``)."""
    if not is_grad(c.ctx, c.val(0)):
        raise c.unsupported()
    dy = c.val(0)
    fnode, finf = forward_of_grad(c.ctx, dy.name, c.op)
    if not _is_avg(c, fnode):
        raise c.unsupported("expand")
    return Desc("meanexp", dy.name, data=(fnode, finf))


def convert_mean_backward_div(c: AtenCall) -> Desc:
    """The backward of ``mean``, step 2: ``div`` of the expanded error by H * W."""
    args = c.args
    if not (isinstance(args[0], torch.fx.Node) and c.val(0).kind == "meanexp"):
        raise c.unsupported()
    d = c.val(0)
    fnode, finf = d.data
    kh, kw = c.ctx.g.values[fnode.inputs[1]].shape[2:]
    if float(args[1]) != float(kh * kw):
        raise EdgecError("internal error: unexpected mean backward")
    return _avg_input_error(c, Desc("val", d.name), fnode, finf)


HANDLERS = {
    "avg_pool2d": convert_avgpool,
    "mean": convert_avgpool,
    "_adaptive_avg_pool2d": convert_avgpool,
    "avg_pool2d_backward": convert_avgpool_backward,
    "_adaptive_avg_pool2d_backward": convert_avgpool_backward,
    "expand": convert_mean_backward_expand,
    "div": convert_mean_backward_div,
}
