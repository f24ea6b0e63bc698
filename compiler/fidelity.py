"""The int8-forward floor of gradient fidelity (docs/numerics.md section 7).

`edgec verify` compares each gradient of the fixed-point step with float32 autograd.  How
close an int8 step can get depends on the model: rounding the forward activations to int8
already moves the gradients (ReLU derivatives flip where activations are near zero, and
every weight gradient multiplies by the rounded activations).  `floor_cosines` measures
that part alone: the float graph after the mask pass evaluated twice in float32
(compiler/ir/float_interp.py), plainly and with every forward int8 activation rounded to
the format the compiler chose for it, weights, errors and gradients staying float.  A
fixed-point cosine near its floor is the int8 forward at work; one far below it points at
the backward numerics (a quantize op in the wrong place, a format too coarse).
"""
from __future__ import annotations

import torch

from .frontend.capture import float_values
from .ir.float_interp import run_float
from .verify import cosine_rel, quantize_input, subset_labels


def float_params(c) -> dict[str, torch.Tensor]:
    """The float values of the graph's parameters and constants (c.model's weights)."""
    return float_values(c.float_graph, c.model)


def forward_formats(c) -> dict[str, int]:
    """{value: exponent} of the compiled graph's int8 values (the activations)."""
    V = c.graph.values
    return {v: V[v].exp for n in c.graph.nodes if n.op != "wview"
            for v in n.outputs if V[v].dtype == "i8"}


def float_and_floor(c, x: torch.Tensor, y: torch.Tensor, params=None) -> tuple[dict, dict]:
    """(float values, int8-forward-floor values) of c's float graph on the batch (x, y);
    the floor run also takes the int8-quantized input, as the device does."""
    params = float_params(c) if params is None else params
    ys = subset_labels(c, y)
    e_x = c.graph.values["x"].exp
    xq = (quantize_input(x, e_x).double() * 2.0 ** e_x).float()
    plain = run_float(c.float_graph, x.float(), ys, params)
    floor = run_float(c.float_graph, xq, ys, params, forward_formats(c))
    return plain, floor


def floor_cosines(c, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """{trainable parameter: cosine of its int8-forward-floor gradient to the float one}
    ({} for a program without a float graph, e.g. resumed from an IR dump)."""
    if c.float_graph is None:
        return {}
    plain, floor = float_and_floor(c, x, y)
    out = {}
    for p in c.program.meta["params"]:
        v = p["grad"]
        if v is None or v not in plain:
            continue
        a = floor[v].double().numpy().reshape(-1)
        out[p["name"]] = cosine_rel(a, plain[v].double().numpy().reshape(-1))[0]
    return out

