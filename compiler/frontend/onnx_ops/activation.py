"""``Relu`` -> ``relu``; ``Clip`` with constant bounds -> ``hardtanh`` (ReLU6, Hardtanh),
``Clip(min=0)`` without a maximum -> ``relu``."""
from __future__ import annotations

import math

import numpy as np

from edgec.compiler.frontend.onnx_ops.context import OnnxCall


def _relu(c: OnnxCall, x: str) -> None:
    layer, base = c.forward_base("relu")
    out = c.emit("relu", [x], c.shape(x), {}, base, layer, c.n.output[0])
    c.step("relu", None, [x], out)


def import_relu(c: OnnxCall) -> None:
    _relu(c, c.data_in())


def _bound(c: OnnxCall, i: int, attr: str, default: float) -> float:
    """Clip's bound: input ``i`` (opset >= 11, a constant) or the attribute."""
    v = c.const_in(i, attr) if len(c.n.input) > i and c.n.input[i] else c.at.get(attr)
    if v is None:
        return default
    v = np.asarray(v)
    if v.size != 1:
        raise c.bad(f"a {attr} bound of shape {tuple(v.shape)} (only a scalar)")
    # the shortest decimal of the float32 bound: ReLU6's 6.0, Hardtanh's -0.1 as in PyTorch
    return float(str(np.float32(v.reshape(-1)[0])))


def import_clip(c: OnnxCall) -> None:
    x = c.data_in()
    lo, hi = _bound(c, 1, "min", -math.inf), _bound(c, 2, "max", math.inf)
    if lo == 0.0 and hi == math.inf:
        _relu(c, x)
        return
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise c.bad(f"bounds min={lo}, max={hi} (only finite min < max, or min=0)")
    layer, base = c.forward_base("hardtanh")
    out = c.emit("hardtanh", [x], c.shape(x), {"lo": lo, "hi": hi}, base, layer,
                 c.n.output[0])
    c.step("hardtanh", (lo, hi), [x], out)


HANDLERS = {"Relu": import_relu, "Clip": import_clip}
