"""``Identity`` (no op); ``Flatten`` (axis 1) and ``Reshape`` to
(N, features) -> ``reshape`` (none when the input already has that shape)."""
from __future__ import annotations

import numpy as np

from edgec.compiler.frontend.onnx_ops.context import OnnxCall


def import_identity(c: OnnxCall) -> None:
    c.imp.env[c.n.output[0]] = c.data_in()


def _reshape_target(c: OnnxCall, xs) -> list[int]:
    """The Reshape's target shape with 0 (copy) and -1 (infer) resolved."""
    sn = c.init_of(1, "shape")
    tgt = [int(v) for v in np.asarray(c.imp.inits[sn]).reshape(-1)]
    tgt = [xs[i] if v == 0 and i < len(xs) else v for i, v in enumerate(tgt)]
    if tgt.count(-1) == 1:
        known = int(np.prod([v for v in tgt if v != -1]))
        tgt = [int(np.prod(xs)) // known if v == -1 else v for v in tgt]
    return tgt


def import_flatten(c: OnnxCall) -> None:
    """``Flatten`` or ``Reshape``: only to (N, features)."""
    N = c.imp.N
    x = c.data_in()
    xs = c.g.values[x].shape
    feat = int(np.prod(xs[1:]))
    if c.n.op_type == "Flatten":
        if int(c.at.get("axis", 1)) != 1:
            raise c.bad(f"axis={c.at['axis']} (only axis=1)")
    else:
        tgt = _reshape_target(c, xs)
        if tgt != [N, feat]:
            raise c.bad(f"target shape {tgt} (only flatten to (N, features))")
    if tuple(xs) == (N, feat):
        c.imp.env[c.n.output[0]] = x
        return
    c.emit("reshape", [x], (N, feat), {"shape": (N, feat)}, "flatten", "forward",
           c.n.output[0])
    c.imp.steps.append(("reshape", None))


HANDLERS = {
    "Identity": import_identity,
    "Flatten": import_flatten,
    "Reshape": import_flatten,
}
