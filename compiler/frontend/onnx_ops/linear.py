"""``Gemm`` (alpha = beta = 1, transA = 0) and ``MatMul`` (optionally followed by the
``Add`` of a 1-D bias, folded in) with an initializer weight -> ``linear``.  A weight
stored ``[F, O]`` (transB = 0, MatMul) becomes the parameter's transpose ``[O, F]``."""
from __future__ import annotations

from edgec.isa.errors import EdgecError
from edgec.compiler.frontend.onnx_ops.context import OnnxCall


def _gemm_weight_bias(c: OnnxCall, w):
    """(weight [O, F], bias initializer name | None) of a Gemm."""
    at = c.at
    if float(at.get("alpha", 1.0)) != 1.0 or float(at.get("beta", 1.0)) != 1.0:
        raise c.bad("alpha/beta other than 1")
    if int(at.get("transA", 0)) != 0:
        raise c.bad("transA=1")
    if int(at.get("transB", 0)) == 0:
        w = w.T
    bn = c.init_of(2, "bias")
    if bn is not None:
        b = c.imp.inits[bn]
        if b.size != w.shape[0] or b.ndim > 2 or (b.ndim == 2 and b.shape[0] != 1):
            raise c.bad(f"bias C of shape {tuple(b.shape)} (needs ({w.shape[0]},))")
    return w, bn


def _matmul_bias_add(c: OnnxCall, w, out_t: str):
    """The ``Add`` of a 1-D bias initializer that alone reads the MatMul's output: folded
    into the linear (the Add node is skipped).  Returns (bias name | None, output tensor)."""
    imp = c.imp
    users = [(j, u) for j, u in enumerate(imp.nodes) if out_t in u.input]
    if len(users) == 1 and users[0][1].op_type == "Add" \
            and imp.consumers.get(out_t, 0) == 1:
        j, u = users[0]
        other = [t for t in u.input if t != out_t]
        if len(other) == 1 and other[0] in imp.inits \
                and imp.inits[other[0]].size == w.shape[0] \
                and imp.inits[other[0]].shape[-1] == w.shape[0]:
            imp.skip.add(j)
            return other[0], u.output[0]
    return None, out_t


def import_linear(c: OnnxCall) -> None:
    imp = c.imp
    x = c.data_in()
    xs = c.shape(x)
    if len(xs) != 2:
        raise c.bad(f"input of shape {xs} (only (N, features); insert a Flatten)")
    wn = c.init_of(1, "weight")
    w = imp.inits[wn]
    if w.ndim != 2:
        raise c.bad("the weight must be 2-D")
    out_t = c.n.output[0]
    if c.n.op_type == "Gemm":
        w, bn = _gemm_weight_bias(c, w)
    else:
        w = w.T
        bn, out_t = _matmul_bias_add(c, w, out_t)
    if w.shape[1] != xs[1]:
        raise EdgecError(f"{c.loc}: weight '{wn}' expects {w.shape[1]} input features, "
                         f"the input has {xs[1]}")
    b = imp.inits[bn].reshape(-1) if bn else None
    mod = c.add_param(wn, w, b)
    ins = [x, f"param:{mod}.weight"] + ([f"param:{mod}.bias"] if b is not None else [])
    out = c.emit("linear", ins, (imp.N, w.shape[0]), {}, mod, mod, out_t)
    imp.mod_specs[mod] = ("linear", {})
    c.step("linear", mod, [x], out)


HANDLERS = {"Gemm": import_linear, "MatMul": import_linear}
