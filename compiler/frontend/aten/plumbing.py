"""aten ops that compute nothing edgec has to emit: tuple indexing, the identity ops,
2-D transposes (a flag on the descriptor), unused scratch tensors and the zero gradient of
a parameter the loss does not reach."""
from __future__ import annotations

import torch

from edgec.isa.errors import EdgecError
from edgec.compiler.frontend.aten.context import AtenCall, Desc, shape_of

# aten ops that are the identity on values
NOOPS = {"detach", "alias", "clone", "contiguous", "lift_fresh_copy", "_to_copy",
         "lift_fresh", "view_as", "expand_as"}


def convert_getitem(c: AtenCall) -> Desc:
    """``operator.getitem`` on a tuple-valued node (convolution_backward, max_pool2d ...)."""
    src = c.val(0)
    if src.kind == "tuple":
        return src.data(c.args[1])
    if src.kind == "loss":
        return src
    raise EdgecError("internal error: getitem on a non-tuple")


def convert_unreached_param_grad(c: AtenCall) -> Desc:
    """``zeros_like(param)`` returned as a gradient: the parameter does not reach the loss."""
    fxn, env = c.fxn, c.env
    if fxn.args and isinstance(fxn.args[0], torch.fx.Node) \
            and env.get(fxn.args[0]) is not None \
            and env[fxn.args[0]].name in c.ctx.param_module and not fxn.users.keys() - {
                u for u in fxn.users if u.op == "output"}:
        return Desc("zero", env[fxn.args[0]].name)
    raise c.unsupported()


def convert_unused_scratch(c: AtenCall) -> Desc:
    """An ``empty`` nobody reads (batch_norm's scratch)."""
    if not c.fxn.users:
        return Desc("none")
    raise c.unsupported()


def convert_identity(c: AtenCall) -> Desc:
    d = c.val(0)
    if c.op == "_to_copy" and c.fxn.kwargs.get("dtype") not in (None, torch.float32):
        raise c.unsupported("to")
    return d


def convert_transpose(c: AtenCall) -> Desc:
    """A 2-D transpose: the same value, with the transposed flag flipped."""
    d, args, op = c.val(0), c.args, c.op
    if d.kind != "val" or len(shape_of(c.ctx, d.name)) != 2:
        raise c.unsupported()
    if op == "transpose" and sorted(int(a) % 2 for a in args[1:3]) != [0, 1]:
        raise c.unsupported()
    if op == "permute" and [int(a) % 2 for a in args[1]] != [1, 0]:
        raise c.unsupported()
    return Desc("val", d.name, not d.T)


HANDLERS = {
    "zeros_like": convert_unreached_param_grad,
    "empty": convert_unused_scratch,
    "empty_like": convert_unused_scratch,
    **{op: convert_identity for op in sorted(NOOPS)},
    **{op: convert_transpose for op in ("t", "transpose", "permute", "numpy_T")},
}
