"""The ONNX import handler table: ONNX op_type -> the function importing such a node
(``handler(OnnxCall) -> None``), gathered from one module per op family.  Nodes that only
compute constants are evaluated first (``fold.py``)."""
from __future__ import annotations

from edgec.compiler.frontend.handler_table import gather_handlers
from edgec.compiler.frontend.onnx_ops import (activation, conv, linear, norm, pool, residual,
                                              shape)

HANDLERS = gather_handlers((conv, linear, norm, activation, pool, residual, shape), "ONNX")
