"""``Conv`` (2-D, grouped or depthwise, dilation 1, symmetric explicit pads,
weight/bias initializers) -> ``conv`` (attr ``groups`` when not 1)."""
from __future__ import annotations

from edgec.isa.errors import EdgecError
from edgec.compiler.frontend.onnx_ops.context import OnnxCall


def _conv_geometry(c: OnnxCall, w) -> tuple[tuple, tuple]:
    """(stride, pad) after checking the attributes against the weight ``w``."""
    at = c.at
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


def _groups(c: OnnxCall, w, cin: int, wn: str) -> int:
    grp = int(c.at.get("group", 1))
    if grp < 1 or cin % grp or w.shape[0] % grp:
        raise c.bad(f"group={grp} with {cin} input and {w.shape[0]} output channels")
    if w.shape[1] * grp != cin:
        raise EdgecError(f"{c.loc}: weight '{wn}' expects {w.shape[1] * grp} input "
                         f"channels (group={grp}), the input has {cin}")
    return grp


def import_conv(c: OnnxCall) -> None:
    imp = c.imp
    x = c.data_in()
    xs = c.shape(x)
    if len(xs) != 4:
        raise c.bad("only 2-D convolutions on (N, C, H, W)")
    wn, bn = c.init_of(1, "weight"), c.init_of(2, "bias")
    w = imp.inits[wn]
    if w.ndim != 4:
        raise c.bad("only 2-D convolutions")
    st, pd = _conv_geometry(c, w)
    grp = _groups(c, w, xs[1], wn)
    b = imp.inits[bn] if bn else None
    if b is not None and b.shape != (w.shape[0],):
        raise c.bad(f"bias shape {tuple(b.shape)}")
    mod = c.add_param(wn, w, b)
    oh = (xs[2] + 2 * pd[0] - w.shape[2]) // st[0] + 1
    ow = (xs[3] + 2 * pd[1] - w.shape[3]) // st[1] + 1
    if oh < 1 or ow < 1:
        raise EdgecError(f"{c.loc}: the kernel is larger than the padded input")
    ins = [x, f"param:{mod}.weight"] + ([f"param:{mod}.bias"] if b is not None else [])
    attrs = {"stride": st, "pad": pd, **({"groups": grp} if grp != 1 else {})}
    out = c.emit("conv", ins, (imp.N, w.shape[0], oh, ow), attrs, mod, mod, c.n.output[0])
    imp.mod_specs[mod] = ("conv", dict(stride=st, pad=pd, groups=grp))
    c.step("conv", mod, [x], out)


HANDLERS = {"Conv": import_conv}
