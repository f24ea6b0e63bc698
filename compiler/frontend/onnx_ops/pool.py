"""Pooling: ``MaxPool`` (2-D, floor mode -- ceil mode where it gives the same windows --,
dilation 1, pads <= kernel/2, no Indices) ->
``maxpool``; ``AveragePool``, ``GlobalAveragePool`` and ``ReduceMean`` over H and W -> a
depthwise ``conv`` with a frozen constant weight (kind ``avg``), as the PyTorch frontend
lowers average pooling (``ReduceMean`` with keepdims=0 adds the ``reshape`` to (N, C))."""
from __future__ import annotations

import numpy as np

from edgec.isa.errors import EdgecError
from edgec.compiler.frontend.onnx_ops.context import OnnxCall
from edgec.compiler.frontend.windows import ceil_is_floor


def _pool_window(c: OnnxCall, k) -> tuple[tuple, tuple]:
    """(stride, pad) after checking the attributes against the kernel ``k``."""
    at = c.at
    c.check_no_dilation()
    if int(at.get("storage_order", 0)) != 0 or (len(c.n.output) > 1 and c.n.output[1]):
        raise c.bad("the Indices output")
    c.check_explicit_pads()
    pads = c.symmetric_pads()
    pd = (int(pads[0]), int(pads[1]))
    st = tuple(int(s) for s in at.get("strides", [1, 1]))
    if len(st) != 2 or min(st) < 1 or min(k) < 1 or min(pd) < 0:
        raise c.bad(f"kernel_shape={list(k)}, strides={list(st)}, pads={list(pads)} "
                    "(kernel and strides >= 1, pads >= 0)")
    if pd[0] > k[0] // 2 or pd[1] > k[1] // 2:
        raise c.bad(f"pads={list(pd)} larger than half the kernel {list(k)}")
    return st, pd


def _window_of(c: OnnxCall) -> tuple[str, tuple, tuple, tuple, tuple]:
    """(input, output shape, kernel, stride, pad) of a 2-D MaxPool / AveragePool."""
    x = c.data_in()
    xs = c.shape(x)
    k = tuple(int(v) for v in c.at.get("kernel_shape", []))
    if len(xs) != 4 or len(k) != 2:
        raise c.bad("only 2-D pooling on (N, C, H, W)")
    st, pd = _pool_window(c, k)
    oh = (xs[2] + 2 * pd[0] - k[0]) // st[0] + 1
    ow = (xs[3] + 2 * pd[1] - k[1]) // st[1] + 1
    if oh < 1 or ow < 1:
        raise EdgecError(f"{c.loc}: the pooling window is larger than the input")
    if int(c.at.get("ceil_mode", 0)) and not ceil_is_floor(xs[2:], k, st, pd):
        raise c.bad(f"ceil_mode=1 on a {xs[2]}x{xs[3]} input, where it adds a partial "
                    "window (only where ceil and floor mode agree)")
    return x, (xs[0], xs[1], oh, ow), k, st, pd


def import_maxpool(c: OnnxCall) -> None:
    x, oshape, k, st, pd = _window_of(c)
    attrs = {"kernel": k, "stride": st, "pad": pd}
    layer, base = c.forward_base("maxpool")
    out = c.emit("maxpool", [x], oshape, attrs, base, layer, c.n.output[0])
    c.step("maxpool", attrs, [x], out)


def _avg(c: OnnxCall, x: str, k, st, pd, keep4: bool = True) -> None:
    """The depthwise conv of constant weight 1/(kh*kw) (PyTorch's count_include_pad)."""
    N, C, H, W = c.shape(x)
    layer, base = c.forward_base("avgpool")
    base = c.imp.fresh_base(base)
    wv = c.add_const(f"{base}:avg", "avg", layer, (C, 1, *k))
    oshape = (N, C, (H + 2 * pd[0] - k[0]) // st[0] + 1, (W + 2 * pd[1] - k[1]) // st[1] + 1)
    attrs = {"stride": st, "pad": pd, "groups": C}
    out = c.emit("conv", [x, wv], oshape, attrs, base, layer,
                 c.n.output[0] if keep4 else None, "out" if keep4 else "pool", fresh=False)
    c.step("avg", dict(kernel=k, stride=st, pad=pd), [x], out)
    if not keep4:
        r = c.emit("reshape", [out], (N, C), {"shape": (N, C)}, base, layer, c.n.output[0],
                   fresh=False)
        c.step("reshape", (N, C), [out], r)


def import_avgpool(c: OnnxCall) -> None:
    x, _, k, st, pd = _window_of(c)
    if pd != (0, 0) and not int(c.at.get("count_include_pad", 0)):
        raise c.bad("count_include_pad=0 with padding (PyTorch's AvgPool2d default, "
                    "count_include_pad=True, exports count_include_pad=1)")
    _avg(c, x, k, st, pd)


def import_global_avgpool(c: OnnxCall) -> None:
    x = c.data_in()
    xs = c.shape(x)
    if len(xs) != 4:
        raise c.bad("only (N, C, H, W) input")
    _avg(c, x, tuple(xs[2:]), tuple(xs[2:]), (0, 0))


def import_reduce_mean(c: OnnxCall) -> None:
    x = c.data_in()
    xs = c.shape(x)
    a = (c.const_in(1, "axes") if len(c.n.input) > 1 and c.n.input[1]
         else c.at.get("axes"))
    axes = None if a is None else sorted(int(v) % len(xs) for v in np.asarray(a).reshape(-1))
    if len(xs) != 4 or axes != [2, 3]:
        raise c.bad(f"axes {axes} of a {len(xs)}-D input (only the mean over H and W of "
                    "(N, C, H, W))")
    _avg(c, x, tuple(xs[2:]), tuple(xs[2:]), (0, 0), bool(int(c.at.get("keepdims", 1))))


HANDLERS = {
    "MaxPool": import_maxpool,
    "AveragePool": import_avgpool,
    "GlobalAveragePool": import_global_avgpool,
    "ReduceMean": import_reduce_mean,
}
