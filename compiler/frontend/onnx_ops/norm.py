"""``BatchNormalization`` (inference form) -> two depthwise 1x1 ``conv``s, as the PyTorch
frontend lowers BatchNorm2d in eval mode (docs/numerics.md): ``<bn>.xhat`` = x * scale
(+ shift; or -mean folded into the producing bias-free conv as a frozen bias when the BN is
its only reader), then ``<bn>.out`` = xhat * gamma + beta; gamma and beta are trainable.
The module (named by gamma's initializer, ``bn1.weight`` -> ``bn1``) keeps the running
statistics, from which ``capture.const_values`` derives the frozen constants."""
from __future__ import annotations

import numpy as np

from edgec.compiler.frontend.onnx_ops.context import OnnxCall


def _stats(c: OnnxCall, C: int):
    """(gamma name, gamma, beta, running mean, running var) as float32 (C,) arrays."""
    names = [c.init_of(i, w) for i, w in ((1, "scale"), (2, "bias"), (3, "mean"),
                                          (4, "var"))]
    if any(t is None for t in names):
        raise c.bad("missing scale, bias, mean or var input")
    arrs = [np.asarray(c.imp.inits[t], dtype=np.float32) for t in names]
    if any(a.shape != (C,) for a in arrs):
        raise c.bad(f"parameters of shapes {[tuple(a.shape) for a in arrs]} for {C} "
                    "channels")
    return (names[0], *arrs)


def import_batchnorm(c: OnnxCall) -> None:
    imp = c.imp
    if int(c.at.get("training_mode", 0)) or len([o for o in c.n.output if o]) > 1:
        raise c.bad("training mode (export the model in eval mode)")
    x = c.data_in()
    xs = c.shape(x)
    if len(xs) != 4:
        raise c.bad("only BatchNorm over (N, C, H, W)")
    C = xs[1]
    gname, gamma, beta, mean, var = _stats(c, C)
    mod = c.add_param(gname, gamma, beta)
    c.g.values[f"param:{mod}.weight"].shape = (C, 1, 1, 1)
    scale = c.add_const(f"{mod}:scale", "bn_scale", mod, (C, 1, 1, 1))
    prod = c.g.producer(x)
    if prod is not None and prod.op == "conv" and len(prod.inputs) == 2 \
            and imp.consumers.get(c.n.input[0], 0) == 1:
        # the conv feeding only this BN takes -mean as a frozen bias (its int8 output is
        # centred); the BN then only scales
        prod.inputs.append(c.add_const(f"{mod}:mean", "bn_mean", mod, (C,)))
        norm = [x, scale]
    else:
        norm = [x, scale, c.add_const(f"{mod}:shift", "bn_shift", mod, (C,))]
    one = {"stride": (1, 1), "pad": (0, 0), "groups": C}
    base = imp.fresh_base(mod)
    xhat = c.emit("conv", norm, xs, one, base, mod, None, "xhat", fresh=False)
    out = c.emit("conv", [xhat, f"param:{mod}.weight", f"param:{mod}.bias"], xs, one, base,
                 mod, c.n.output[0], fresh=False)
    imp.mod_specs[mod] = ("bn", dict(mean=mean, var=var, eps=float(c.at.get("epsilon",
                                                                             1e-5))))
    c.step("bn", mod, [x], out)


HANDLERS = {"BatchNormalization": import_batchnorm}
