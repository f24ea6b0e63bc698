"""``Relu`` -> ``relu``."""
from __future__ import annotations

from edgec.compiler.frontend.onnx_ops.context import OnnxCall


def import_relu(c: OnnxCall) -> None:
    x = c.data_in()
    c.emit("relu", [x], c.g.values[x].shape, {}, "relu", "forward", c.n.output[0])
    c.imp.steps.append(("relu", None))


HANDLERS = {"Relu": import_relu}
