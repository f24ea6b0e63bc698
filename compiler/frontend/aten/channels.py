"""Channel plumbing: ``cat`` along dim 1 -> ``concat``; ``split`` / ``split_with_sizes``
(``torch.split``, ``chunk``) and ``slice`` (``narrow``, ``x[:, a:b]``) along dim 1 ->
``slice`` nodes.  In the backward, a concat's error is sliced back into its operands'
errors (``slice``, ``grad: True``) and a split's errors are concatenated into the error
of its input (``concat``, ``grad: True``)."""
from __future__ import annotations

import torch

from edgec.isa.errors import EdgecError
from edgec.compiler.frontend.aten.context import (SUPPORTED, AtenCall, Desc, arg_of, emit,
                                                  grad_info, is_grad, lazy_tuple, shape_of)

_CHANNELS = " (only along the channel dim 1 of tensors with the same other dims)"


def _dim1(c: AtenCall, dim, ndim: int, what: str) -> None:
    if ndim < 2 or int(dim) % ndim != 1:
        raise c.unsupported(what, _CHANNELS)


def convert_cat(c: AtenCall) -> Desc:
    ctx = c.ctx
    xs = c.args[0]
    if not isinstance(xs, (list, tuple)) or not all(isinstance(a, torch.fx.Node) for a in xs):
        raise c.unsupported("cat", _CHANNELS)
    ds = [c.env.get(a) for a in xs]
    if any(d is None or d.kind != "val" or d.T for d in ds):
        raise c.unsupported("cat", _CHANNELS)
    shapes = [shape_of(ctx, d.name) for d in ds]
    _dim1(c, arg_of(c.fxn, 1, "dim", 0), len(shapes[0]), "cat")
    if any(len(s) != len(shapes[0]) or s[:1] + s[2:] != shapes[0][:1] + shapes[0][2:]
           for s in shapes):
        raise c.unsupported("cat", _CHANNELS)
    sizes = [s[1] for s in shapes]
    oshape = (shapes[0][0], sum(sizes), *shapes[0][2:])
    grads = [is_grad(ctx, d) for d in ds]
    if all(grads):
        return _split_error(c, [d.name for d in ds], sizes, oshape)
    if any(grads):
        raise c.unsupported("cat", " (mixing forward values and errors)")
    if len(ds) == 1:
        return ds[0]
    info = c.forward_info("concat", "cat")
    return Desc("val", emit(ctx, "concat", [d.name for d in ds], f"{info.base}.out", oshape,
                            {"grad": False, "sizes": sizes}, info))


def _split_error(c: AtenCall, errs: list[str], sizes: list[int], oshape) -> Desc:
    """The backward of a split: its parts' errors side by side are the error of the split's
    input (the parts must be the split's slices, in order, covering its input)."""
    ctx = c.ctx
    parts = [ctx.producer.get(ctx.info[e].grad_of) for e in errs]
    if any(p is None or p.op != "slice" for p in parts) \
            or len({p.inputs[0] for p in parts}) != 1 \
            or [p.attrs["start"] for p in parts] != [sum(sizes[:i]) for i in range(len(sizes))] \
            or shape_of(ctx, parts[0].inputs[0]) != oshape:
        raise c.unsupported("cat", " (of errors that are not the parts of one split)")
    x = parts[0].inputs[0]
    finf = ctx.info[parts[0].outputs[0]]
    if len(errs) == 1:
        return Desc("val", errs[0])
    out = emit(ctx, "concat", errs, ctx.g.fresh(f"{finf.base}.dx"), oshape,
               {"grad": True, "sizes": sizes}, grad_info(finf, x))
    return Desc("val", out)


def _slice_node(c: AtenCall, x: str, start: int, stop: int, base: str, info) -> str:
    s = shape_of(c.ctx, x)
    return emit(c.ctx, "slice", [x], c.ctx.g.fresh(base), (s[0], stop - start, *s[2:]),
                {"grad": False, "start": start, "stop": stop, "c0": start, "c1": stop}, info)


def convert_split(c: AtenCall) -> Desc:
    """``split`` (equal parts, the last one smaller) / ``split_with_sizes``: a tuple whose
    members become ``slice`` nodes when they are read."""
    xd = c.val(0)
    if xd.kind != "val" or xd.T or is_grad(c.ctx, xd):
        raise c.unsupported("split", _CHANNELS)
    s = shape_of(c.ctx, xd.name)
    _dim1(c, arg_of(c.fxn, 2, "dim", 0), len(s), "split")
    arg = c.args[1]
    if c.op == "split_with_sizes":
        sizes = [int(v) for v in arg]
    else:
        step = int(arg)
        sizes = [min(step, s[1] - i) for i in range(0, s[1], step)]
    info = c.forward_info("slice", "split")
    starts = [sum(sizes[:i]) for i in range(len(sizes))]

    def member(i):
        if not 0 <= i < len(sizes):
            return None
        return _slice_node(c, xd.name, starts[i], starts[i] + sizes[i],
                           f"{info.base}.out{i}", info)
    return lazy_tuple(member)


def _range(c: AtenCall, C: int) -> tuple[int, int]:
    fxn = c.fxn
    start = arg_of(fxn, 2, "start", None)
    stop = arg_of(fxn, 3, "end", None)
    if int(arg_of(fxn, 4, "step", 1)) != 1:
        raise c.unsupported("slice", " (only a step of 1)")
    start = 0 if start is None else int(start)
    stop = C if stop is None else int(stop)
    start, stop = (v + C if v < 0 else v for v in (start, stop))
    return max(0, min(C, start)), max(0, min(C, stop))


def convert_slice(c: AtenCall) -> Desc:
    """``slice`` along dim 1: of a forward value, a ``slice`` node (the whole range: the
    value itself); of a concat's error, that operand's error."""
    ctx = c.ctx
    xd = c.val(0)
    if xd.kind != "val" or xd.T:
        raise c.unsupported("slice", _CHANNELS)
    s = shape_of(ctx, xd.name)
    _dim1(c, arg_of(c.fxn, 1, "dim", 0), len(s), "slice")
    start, stop = _range(c, s[1])
    if (start, stop) == (0, s[1]):
        return xd
    if stop <= start:
        raise c.unsupported("slice", " (an empty channel range)")
    if not is_grad(ctx, xd):
        info = c.forward_info("slice", "slice")
        return Desc("val", _slice_node(c, xd.name, start, stop, f"{info.base}.out", info))
    y = ctx.info[xd.name].grad_of                  # the error of a concat's output
    cat = ctx.producer.get(y)
    if cat is None or cat.op != "concat":
        raise c.unsupported("slice", " (of an error that is not a concat's)")
    offs = [sum(cat.attrs["sizes"][:i]) for i in range(len(cat.inputs))]
    part = next((i for i, o in enumerate(offs)
                 if (o, o + cat.attrs["sizes"][i]) == (start, stop)), None)
    if part is None:
        raise c.unsupported("slice", " (of a concat's error, not one of its operands)")
    finf = ctx.info[cat.outputs[0]]
    out = emit(ctx, "slice", [xd.name], ctx.g.fresh(f"{finf.base}.dx{part}"),
               (s[0], stop - start, *s[2:]),
               {"grad": True, "start": start, "stop": stop, "c0": start, "c1": stop,
                "sel": y}, grad_info(finf, cat.inputs[part]))
    return Desc("val", out)


def convert_slice_backward(c: AtenCall) -> Desc:
    """``slice_backward`` of a slice over the whole channel range: the error itself."""
    dy = c.val(0)
    full = tuple(int(v) for v in c.args[1])
    if dy.kind == "val" and shape_of(c.ctx, dy.name) == full:
        return dy
    inf = c.ctx.info.get(dy.name) if dy.kind == "val" else None
    fwd = c.ctx.info.get(inf.grad_of) if inf is not None and inf.grad_of else None
    where = (fwd.loc if fwd else None) or c.ctx.base_name
    layer = fwd.layer if fwd else "forward"
    raise EdgecError(f"{where}: unsupported op 'slice' (layer '{layer}') (a channel range "
                     "used alone, not as a part of a split: its error would be zero-padded); "
                     f"{SUPPORTED}")


HANDLERS = {
    "cat": convert_cat,
    "split": convert_split,
    "split_with_sizes": convert_split,
    "slice": convert_slice,
    "slice_backward": convert_slice_backward,
}
