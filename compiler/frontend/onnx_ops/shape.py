"""Views: ``Identity``, ``Dropout`` (eval: the identity) and a ``Transpose`` that keeps the
row-major order (it only moves size-1 dims) bind their output to their input; ``Flatten``
(axis 1), ``Reshape`` and ``Squeeze`` to (N, features) -> ``reshape`` (none when the input
already has that shape); ``Unsqueeze`` / ``Reshape`` back to the 4-D shape a flatten came
from reuse that 4-D value."""
from __future__ import annotations

import numpy as np

from edgec.compiler.frontend.onnx_ops.context import OnnxCall


def import_identity(c: OnnxCall) -> None:
    c.imp.env[c.n.output[0]] = c.data_in()


def import_dropout(c: OnnxCall) -> None:
    if len(c.n.output) > 1 and c.n.output[1] and c.imp.consumers.get(c.n.output[1], 0):
        raise c.bad("its mask output is used")
    if len(c.n.input) > 2 and c.n.input[2]:
        t = c.const_in(2, "training_mode")
        if bool(np.asarray(t).reshape(-1)[0]):
            raise c.bad("training_mode=True (export the model in eval mode)")
    import_identity(c)


def import_transpose(c: OnnxCall) -> None:
    x = c.data_in()
    xs = c.shape(x)
    perm = [int(p) for p in c.at.get("perm", list(range(len(xs)))[::-1])]
    moved = [p for p in perm if xs[p] != 1]
    if moved != sorted(moved):
        raise c.bad(f"perm={perm} of shape {xs} (only a transpose that moves size-1 "
                    "dimensions, a no-op view)")
    tshape = tuple(xs[p] for p in perm)
    _view(c, x, list(tshape))


def _reshape_target(c: OnnxCall, xs) -> list[int]:
    """The Reshape's target shape with 0 (copy) and -1 (infer) resolved."""
    tgt = [int(v) for v in np.asarray(c.const_in(1, "shape")).reshape(-1)]
    tgt = [xs[i] if v == 0 and i < len(xs) else v for i, v in enumerate(tgt)]
    if tgt.count(-1) == 1:
        known = int(np.prod([v for v in tgt if v != -1]))
        tgt = [int(np.prod(xs)) // known if v == -1 else v for v in tgt]
    return tgt


def _squeeze_target(c: OnnxCall, xs) -> list[int]:
    a = (c.const_in(1, "axes") if len(c.n.input) > 1 and c.n.input[1]
         else c.at.get("axes"))
    axes = (set(range(len(xs))) if a is None
            else {int(v) % len(xs) for v in np.asarray(a).reshape(-1)})
    if c.n.op_type == "Squeeze":
        return [d for i, d in enumerate(xs) if not (i in axes and d == 1)]
    out = list(xs)
    for ax in sorted(int(v) % (len(xs) + len(axes)) for v in np.asarray(a).reshape(-1)):
        out.insert(ax, 1)
    return out


def _view(c: OnnxCall, x: str, tgt: list[int]) -> None:
    """``x`` viewed as ``tgt``: the same value, a flatten to (N, features), or back to the
    4-D value a flatten came from."""
    N, xs = c.imp.N, c.shape(x)
    out_t = c.n.output[0]
    if tuple(tgt) == tuple(xs):
        c.imp.env[out_t] = x
        return
    src = c.imp.aliases.get(x)
    if src is not None and tuple(c.shape(src)) == tuple(tgt):
        c.imp.env[out_t] = src          # undoes a flatten: the dead reshape is dropped
        return
    feat = int(np.prod(xs[1:]))
    if tuple(tgt) != (N, feat):
        raise c.bad(f"target shape {tgt} of {xs} (only a flatten to (N, features))")
    layer, base = c.forward_base("flatten")
    out = c.emit("reshape", [x], (N, feat), {"shape": (N, feat)}, base, layer, out_t)
    c.imp.aliases[out] = x
    c.step("reshape", (N, feat), [x], out)


def import_flatten(c: OnnxCall) -> None:
    """``Flatten``, ``Reshape``, ``Squeeze`` or ``Unsqueeze`` of an activation."""
    x = c.data_in()
    xs = c.shape(x)
    op = c.n.op_type
    if op == "Flatten":
        if int(c.at.get("axis", 1)) != 1:
            raise c.bad(f"axis={c.at['axis']} (only axis=1)")
        tgt = [xs[0], int(np.prod(xs[1:]))]
    elif op == "Reshape":
        tgt = _reshape_target(c, xs)
    else:
        tgt = _squeeze_target(c, xs)
    _view(c, x, tgt)


HANDLERS = {
    "Identity": import_identity,
    "Dropout": import_dropout,
    "Transpose": import_transpose,
    "Flatten": import_flatten,
    "Reshape": import_flatten,
    "Squeeze": import_flatten,
    "Unsqueeze": import_flatten,
}
