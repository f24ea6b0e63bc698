"""``Add`` of two activations of the same shape (a residual connection) -> ``add``."""
from __future__ import annotations

from edgec.compiler.frontend.onnx_ops.context import OnnxCall


def import_add(c: OnnxCall) -> None:
    if len(c.n.input) != 2 or any(t not in c.imp.env for t in c.n.input):
        raise c.bad("an operand that is not an activation (only activation + activation "
                    "of the same shape; a bias Add only right after a MatMul)")
    a, b = c.data_in(0), c.data_in(1)
    if c.shape(a) != c.shape(b):
        raise c.bad(f"operands of shapes {c.shape(a)} and {c.shape(b)} (no broadcasting)")
    layer, base = c.forward_base("add")
    out = c.emit("add", [a, b], c.shape(a), {"grad": False}, base, layer, c.n.output[0])
    c.step("add", None, [a, b], out)


HANDLERS = {"Add": import_add}
