"""The loss chain capture inserts (mean softmax cross-entropy): its forward is not emitted;
its backward is one ``loss_grad`` producing ``loss.dz``."""
from __future__ import annotations

from edgec.isa.errors import EdgecError
from edgec.compiler.frontend.aten.context import AtenCall, Desc, ValueInfo, emit, shape_of


def convert_log_softmax(c: AtenCall) -> Desc:
    return Desc("logsoftmax", c.val(0).name)


def convert_nll_loss(c: AtenCall) -> Desc:
    return Desc("loss")


def convert_loss_seed(c: AtenCall) -> Desc:
    """``ones_like(loss)``: the seed of the backward."""
    if c.val(0).kind == "loss":
        return Desc("loss")
    raise c.unsupported()


def convert_nll_loss_backward(c: AtenCall) -> Desc:
    args = c.args
    ls = c.val(1)
    if ls.kind != "logsoftmax":
        raise EdgecError("internal error: unexpected loss structure")
    reduction = int(args[4]) if len(args) > 4 else 1
    if reduction != 1 or args[3] is not None:
        raise EdgecError("internal error: the loss must be mean cross-entropy")
    return Desc("nllgrad", ls.name)


def convert_log_softmax_backward(c: AtenCall) -> Desc:
    """The gradient of the logits: ``loss_grad(z, labels) -> loss.dz``."""
    d = c.val(0)
    if d.kind != "nllgrad":
        raise EdgecError("internal error: unexpected loss structure")
    z = d.name
    zp = c.ctx.producer.get(z)
    info = ValueInfo("loss", zp.loc if zp else None, "loss", grad_of=z)
    return Desc("val", emit(c.ctx, "loss_grad", [z, "labels"], "loss.dz", shape_of(c.ctx, z),
                            {}, info))


HANDLERS = {
    "_log_softmax": convert_log_softmax,
    "nll_loss_forward": convert_nll_loss,
    "ones_like": convert_loss_seed,
    "nll_loss_backward": convert_nll_loss_backward,
    "_log_softmax_backward_data": convert_log_softmax_backward,
}
