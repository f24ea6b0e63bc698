"""BatchNorm2d in eval mode: two depthwise 1x1 ``conv``s (docs/numerics.md): ``xhat`` =
x * scale (+ shift, or -mean folded into the producing conv as a frozen bias), then
``out`` = xhat * gamma + beta.  Its backward: ``conv_eb`` through gamma and scale,
``conv_wg`` for gamma, ``bias_grad`` for beta."""
from __future__ import annotations

import torch

from edgec.isa.errors import EdgecError
from edgec.compiler.frontend.aten.context import (AtenCall, Desc, add_const_param, aten_name,
                                                  claim_params, desc_of, emit, grad_info,
                                                  lazy_tuple, module_of, shape_of)


def _normalise(c: AtenCall, xa, xd: Desc, mod: str, info, one: dict) -> tuple[str, str]:
    """Emit ``<base>.xhat`` (attrs ``one``); returns (xhat, scale)."""
    ctx = c.ctx
    xs = shape_of(ctx, xd.name)
    C = xs[1]
    scale = add_const_param(ctx, f"{mod}:scale", "bn_scale", mod, (C, 1, 1, 1))
    prod = ctx.producer.get(xd.name)
    if prod is not None and prod.op == "conv" and len(prod.inputs) == 2 and all(
            aten_name(u.target) in ("native_batch_norm", "native_batch_norm_backward")
            for u in xa.users):
        # the conv feeding only this BN takes -mean as a frozen bias, so its int8 output
        # is centred (no precision spent on the mean); the BN then only scales
        prod.inputs.append(add_const_param(ctx, f"{mod}:mean", "bn_mean", mod, (C,)))
        norm = [xd.name, scale]
    else:
        norm = [xd.name, scale, add_const_param(ctx, f"{mod}:shift", "bn_shift", mod, (C,))]
    xhat = emit(ctx, "conv", norm, f"{info.base}.xhat", xs, one, info)
    return xhat, scale


def convert_batchnorm(c: AtenCall) -> Desc:
    ctx, args, op = c.ctx, c.args, c.op
    if op == "native_batch_norm":
        xa, wa, ba, training = args[0], args[1], args[2], bool(args[5])
    else:
        xa, wa, ba, training = args[0], args[1], args[2], False
    mod = module_of(c.fxn)
    if training or not isinstance(ctx.modules.get(mod), torch.nn.BatchNorm2d):
        raise c.unsupported("batch_norm", " (only nn.BatchNorm2d modules with running "
                                          "statistics)")
    xd = desc_of(c.env, xa)
    xs = shape_of(ctx, xd.name)
    if xd.kind != "val" or len(xs) != 4:
        raise c.unsupported("batch_norm", " on input that is not (N, C, H, W)")
    info = c.forward_info("bn")
    one = {"stride": (1, 1), "pad": (0, 0), "groups": xs[1]}    # both convs share it
    xhat, scale = _normalise(c, xa, xd, mod, info, one)
    out = xhat
    gamma = beta = None
    if wa is not None:
        gamma = desc_of(c.env, wa).name
        beta = desc_of(c.env, ba).name if ba is not None else None
        ps = [gamma] + ([beta] if beta else [])
        if any(p not in ctx.param_module for p in ps):
            raise c.unsupported("batch_norm", " with non-parameter weight/bias")
        claim_params(ctx, ps, c.loc)
        ctx.g.values[gamma].shape = (xs[1], 1, 1, 1)
        out = emit(ctx, "conv", [xhat] + ps, f"{info.base}.out", xs, one, info)
    ctx.bn[xd.name] = dict(x=xd.name, xhat=xhat, scale=scale, gamma=gamma, beta=beta,
                           info=info, out=out)
    return Desc("tuple", data=lambda i: Desc("val", out) if i == 0 else Desc("none"))


def convert_batchnorm_backward(c: AtenCall) -> Desc:
    """A tuple (dx, dgamma, dbeta) whose members are emitted when read (getitem)."""
    ctx = c.ctx
    dy, xd = c.val(0), c.val(1)
    rec = ctx.bn.get(xd.name)
    if rec is None:
        raise EdgecError("internal error: unexpected batch_norm backward")
    binf = rec["info"]
    xs = shape_of(ctx, xd.name)
    one = {"stride": (1, 1), "pad": (0, 0), "groups": xs[1]}
    def member(i):
        if i == 0:
            d = dy.name
            if rec["gamma"] is not None:
                d = emit(ctx, "conv_eb", [d, rec["gamma"]], f"{binf.base}.dxhat", xs,
                         {**one, "in_shape": xs}, grad_info(binf, rec["xhat"]))
            return emit(ctx, "conv_eb", [d, rec["scale"]], f"{binf.base}.dx", xs,
                        {**one, "in_shape": xs}, grad_info(binf, xd.name))
        if i == 1 and rec["gamma"] is not None:
            return emit(ctx, "conv_wg", [dy.name, rec["xhat"]], ctx.g.fresh(f"{binf.base}.dw"),
                        (xs[1], 1, 1, 1), {**one, "kernel": (1, 1)},
                        grad_info(binf, rec["gamma"]))
        if i == 2 and rec["beta"] is not None:
            return emit(ctx, "bias_grad", [dy.name], ctx.g.fresh(f"{binf.base}.db"), (xs[1],),
                        {}, grad_info(binf, rec["beta"]))
        return None
    return lazy_tuple(member)

HANDLERS = {
    "native_batch_norm": convert_batchnorm,
    "_native_batch_norm_legit_no_training": convert_batchnorm,
    "native_batch_norm_backward": convert_batchnorm_backward,
}
