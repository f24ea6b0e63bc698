"""``max_pool2d_with_indices`` -> ``maxpool``; its backward -> ``maxpool_bwd``."""
from __future__ import annotations

from edgec.compiler.frontend.windows import ceil_is_floor
from edgec.compiler.frontend.aten.context import (AtenCall, Desc, arg_of, emit,
                                                  forward_matching, grad_info, pair, shape_of)


def convert_maxpool(c: AtenCall) -> Desc:
    """A tuple: member 0 the pooled value, member 1 the indices (read by the backward)."""
    fxn = c.fxn
    xd = c.val(0)
    kernel = pair(arg_of(fxn, 1, "kernel_size", None))
    stride = arg_of(fxn, 2, "stride", [])
    stride = pair(stride) if stride not in ([], (), None) else kernel
    pad = pair(arg_of(fxn, 3, "padding", 0))
    dil = pair(arg_of(fxn, 4, "dilation", 1))
    ceil = bool(arg_of(fxn, 5, "ceil_mode", False))
    detail = []
    if dil != (1, 1):
        detail.append(f"dilation={dil}")
    if xd.kind != "val" or len(shape_of(c.ctx, xd.name)) != 4:
        detail.append("input that is not (N, C, H, W)")
    elif ceil and not ceil_is_floor(shape_of(c.ctx, xd.name)[2:], kernel, stride, pad):
        hw = shape_of(c.ctx, xd.name)[2:]
        detail.append(f"ceil_mode=True on a {hw[0]}x{hw[1]} input, where it adds a partial "
                      "window (only where ceil and floor mode agree)")
    if detail:
        raise c.unsupported("maxpool", " with " + ", ".join(detail))
    info = c.forward_info("maxpool")
    shape = tuple(fxn.meta["val"][0].shape)
    attrs = {"kernel": kernel, "stride": stride, "pad": pad}
    out = emit(c.ctx, "maxpool", [xd.name], f"{info.base}.out", shape, attrs, info)

    def pick(i, out=out):
        return Desc("val", out) if i == 0 else Desc("indices", out)
    return Desc("tuple", data=pick)


def convert_maxpool_backward(c: AtenCall) -> Desc:
    ctx = c.ctx
    dy, xd = c.val(0), c.val(1)
    fnode, finf = forward_matching(ctx, c.op, lambda n: n.op == "maxpool"
                                   and n.inputs[0] == xd.name)
    out = emit(ctx, "maxpool_bwd", [dy.name, xd.name], f"{finf.base}.dx",
               shape_of(ctx, xd.name), dict(fnode.attrs), grad_info(finf, fnode.inputs[0]))
    return Desc("val", out)


HANDLERS = {
    "max_pool2d_with_indices": convert_maxpool,
    "max_pool2d_with_indices_backward": convert_maxpool_backward,
}
