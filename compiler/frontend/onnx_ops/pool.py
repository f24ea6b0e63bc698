"""``MaxPool`` (2-D, floor mode, dilation 1, pads <= kernel/2, no Indices) -> ``maxpool``."""
from __future__ import annotations

from edgec.isa.errors import EdgecError
from edgec.compiler.frontend.onnx_ops.context import OnnxCall


def _pool_window(c: OnnxCall, k) -> tuple[tuple, tuple]:
    """(stride, pad) after checking the attributes against the kernel ``k``."""
    at = c.at
    if int(at.get("ceil_mode", 0)):
        raise c.bad("ceil_mode=1")
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


def import_maxpool(c: OnnxCall) -> None:
    x = c.data_in()
    xs = c.g.values[x].shape
    k = tuple(int(v) for v in c.at.get("kernel_shape", []))
    if len(xs) != 4 or len(k) != 2:
        raise c.bad("only 2-D pooling on (N, C, H, W)")
    st, pd = _pool_window(c, k)
    oh = (xs[2] + 2 * pd[0] - k[0]) // st[0] + 1
    ow = (xs[3] + 2 * pd[1] - k[1]) // st[1] + 1
    if oh < 1 or ow < 1:
        raise EdgecError(f"{c.loc}: the pooling window is larger than the input")
    attrs = {"kernel": k, "stride": st, "pad": pd}
    c.emit("maxpool", [x], (c.imp.N, xs[1], oh, ow), attrs, "maxpool", "forward",
           c.n.output[0])
    c.imp.steps.append(("maxpool", attrs))


HANDLERS = {"MaxPool": import_maxpool}
