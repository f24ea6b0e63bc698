"""``Conv`` (2-D, group 1, dilation 1, symmetric explicit pads) -> ``conv``."""
from __future__ import annotations

from edgec.isa.errors import EdgecError
from edgec.compiler.frontend.onnx_ops.context import OnnxCall


def _conv_geometry(c: OnnxCall, w) -> tuple[tuple, tuple]:
    """(stride, pad) after checking the attributes against the weight ``w``."""
    at = c.at
    if int(at.get("group", 1)) != 1:
        raise c.bad(f"group={at['group']}")
    c.check_no_dilation()
    c.check_explicit_pads()
    if "kernel_shape" in at and list(at["kernel_shape"]) != list(w.shape[2:]):
        raise c.bad("kernel_shape does not match the weight")
    pads = c.symmetric_pads()
    st = tuple(int(s) for s in at.get("strides", [1, 1]))
    pd = (int(pads[0]), int(pads[1]))
    if len(st) != 2 or min(st) < 1 or min(pd) < 0:
        raise c.bad(f"strides={list(st)}, pads={list(pads)} (strides >= 1, pads >= 0)")
    return st, pd


def import_conv(c: OnnxCall) -> None:
    imp = c.imp
    x = c.data_in()
    xs = c.g.values[x].shape
    if len(xs) != 4:
        raise c.bad("only 2-D convolutions on (N, C, H, W)")
    wn, bn = c.init_of(1, "weight"), c.init_of(2, "bias")
    w = imp.inits[wn]
    if w.ndim != 4:
        raise c.bad("only 2-D convolutions")
    st, pd = _conv_geometry(c, w)
    if w.shape[1] != xs[1]:
        raise EdgecError(f"{c.loc}: weight '{wn}' expects {w.shape[1]} input channels, "
                         f"the input has {xs[1]}")
    b = imp.inits[bn] if bn else None
    if b is not None and b.shape != (w.shape[0],):
        raise c.bad(f"bias shape {tuple(b.shape)}")
    mod = c.add_param(wn, w, b)
    oh = (xs[2] + 2 * pd[0] - w.shape[2]) // st[0] + 1
    ow = (xs[3] + 2 * pd[1] - w.shape[3]) // st[1] + 1
    if oh < 1 or ow < 1:
        raise EdgecError(f"{c.loc}: the kernel is larger than the padded input")
    ins = [x, f"param:{mod}.weight"] + ([f"param:{mod}.bias"] if b is not None else [])
    c.emit("conv", ins, (imp.N, w.shape[0], oh, ow), {"stride": st, "pad": pd}, mod, mod,
           c.n.output[0])
    imp.mod_specs[mod] = ("conv", dict(stride=st, pad=pd))
    imp.steps.append(("conv", mod))


HANDLERS = {"Conv": import_conv}
