"""Constant folding: ONNX nodes whose inputs are all constants (initializers, ``Constant``
outputs, the static shape of an activation via ``Shape``) are evaluated here, so that
``Identity`` chains of shared initializers, casts, and the ``Shape`` / ``Gather`` /
``Unsqueeze`` / ``Concat`` arithmetic torch.onnx emits for a reshape's target shape become
plain constants the op handlers read."""
from __future__ import annotations

import numpy as np

from edgec.isa.errors import EdgecError


def _raw_axes(c, i) -> list[int] | None:
    """Input ``i`` (opset >= 13) or the attribute ``axes``, as given."""
    a = c.const_in(i, "axes") if len(c.n.input) > i and c.n.input[i] else c.at.get("axes")
    return None if a is None else [int(v) for v in np.asarray(a).reshape(-1)]


def _axes(c, i, rank):
    """The axes of input ``i`` or attribute ``axes``, made non-negative, sorted."""
    a = _raw_axes(c, i)
    return None if a is None else sorted(v % rank for v in a)


def _shape(c, v):
    s = np.asarray(v, dtype=np.int64)
    start, end = int(c.at.get("start", 0)), c.at.get("end")
    return s[start:None if end is None else int(end)]


def _unsqueeze(c, v):
    out = np.asarray(v)
    for a in _axes(c, 1, out.ndim + len(_raw_axes(c, 1) or [])):
        out = np.expand_dims(out, a)
    return out


def _squeeze(c, v):
    v = np.asarray(v)
    ax = _axes(c, 1, max(v.ndim, 1))
    return np.squeeze(v, axis=tuple(ax)) if ax is not None else np.squeeze(v)


def _slice(c, v):
    v = np.asarray(v)
    starts, ends = (np.asarray(c.const_in(i, w)).reshape(-1) for i, w in ((1, "starts"),
                                                                          (2, "ends")))
    axes = _axes(c, 3, v.ndim) or list(range(len(starts)))
    steps = (np.asarray(c.const_in(4, "steps")).reshape(-1)
             if len(c.n.input) > 4 and c.n.input[4] else [1] * len(starts))
    sl = [slice(None)] * v.ndim
    for a, s0, e0, st in zip(axes, starts, ends, steps):
        sl[a] = slice(int(s0), int(max(min(e0, 2 ** 62), -2 ** 62)), int(st))
    return v[tuple(sl)]


def _reshape(c, v):
    v = np.asarray(v)
    tgt = [int(t) for t in np.asarray(c.const_in(1, "shape")).reshape(-1)]
    tgt = [v.shape[i] if t == 0 and not c.at.get("allowzero", 0) else t
           for i, t in enumerate(tgt)]
    return v.reshape(tgt)


def _div(a, b):
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":
        return (np.trunc(a / b)).astype(np.result_type(a, b))
    return a / b


def _cast(c, v):
    from onnx import helper
    return np.asarray(v).astype(helper.tensor_dtype_to_np_dtype(int(c.at["to"])))


FOLD = {
    "Identity": lambda c, v: v,
    "Cast": _cast,
    "Shape": _shape,
    "Gather": lambda c, v: np.take(np.asarray(v), np.asarray(c.const_in(1, "indices")),
                                   axis=int(c.at.get("axis", 0))),
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Concat": None,        # every input
    "Slice": _slice,
    "Reshape": _reshape,
    "Add": None, "Sub": None, "Mul": None, "Div": None,
}
_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": _div}


def try_fold(c) -> bool:
    """Evaluate node ``c.n`` when it only computes a constant; True when it did."""
    n, imp = c.n, c.imp
    op = n.op_type
    if op not in FOLD or not n.input:
        return False
    data = n.input[0]
    if op == "Shape" and data in imp.env:
        value = c.g.values[imp.env[data]].shape
    elif all(t in imp.inits for t in n.input if t):
        value = imp.inits[data]
    else:
        return False
    try:
        if op == "Concat":
            out = np.concatenate([np.asarray(imp.inits[t]).reshape(-1)
                                  if np.asarray(imp.inits[t]).ndim == 0 else imp.inits[t]
                                  for t in n.input], axis=int(c.at.get("axis", 0)))
        elif op in _BINARY:
            out = _BINARY[op](imp.inits[n.input[0]], imp.inits[n.input[1]])
        else:
            out = FOLD[op](c, value)
    except EdgecError:
        raise
    except Exception as e:  # noqa: BLE001 - malformed constant arithmetic
        raise EdgecError(f"{c.loc}: cannot fold constant {op} ({type(e).__name__}: "
                         f"{e})") from None
    imp.inits[n.output[0]] = np.asarray(out)
    return True
