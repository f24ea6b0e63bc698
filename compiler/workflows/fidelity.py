"""Gradient fidelity of a fixed-point step (docs/numerics.md section 7).

The criterion `edgec verify` passes or fails on: `criterion_cosines`, each trainable
gradient of the fixed-point step averaged over several stochastic-rounding seeds
(`seed_averaged_grads`) against float back-propagation through the device's own forward
(`device_forward_backprop`: PyTorch autograd over the masked float graph with the device's
dequantized weights and int8 activations), cosine >= THRESHOLD for every one.

Information beside it: the int8-forward floor.  Rounding the forward activations to int8
already moves the gradients away from float32 autograd of the unquantized model (ReLU
derivatives flip where activations are near zero, and every weight gradient multiplies by
the rounded activations).  `floor_cosines` measures that part alone: the float graph after
the mask pass evaluated twice in float32 (compiler/ir/float_interp.py), plainly and with
every forward int8 activation rounded to the format the compiler chose for it, weights,
errors and gradients staying float.
"""
from __future__ import annotations

import dataclasses

import torch

from ..frontend.capture import float_values
from ..ir.float_interp import eval_node as float_eval
from ..ir.float_interp import _view_index, run_float
from ..ir.ops import ACTIVATIONS, FORWARD, REGISTRY as OP
from ..reference import run_reference
from .floatmodel import cosine_rel, quantize_input, subset_labels, teacher_target_loss


def float_params(c) -> dict[str, torch.Tensor]:
    """The float values of the graph's parameters and constants (c.model's weights)."""
    return c.float_params if c.float_params is not None else float_values(c.float_graph,
                                                                          c.model)


def forward_formats(c) -> dict[str, int]:
    """{value: exponent} of the compiled graph's int8 values (the activations)."""
    V = c.graph.values
    return {v: V[v].exp for n in c.graph.nodes if OP[n.op].result != "view"
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



# --------------------------------------------------------------------------------------
# The pass/fail criterion: float back-propagation through the device's own forward.

#: the forward ops of a masked training graph (everything before its loss_grad)
FORWARD_OPS = FORWARD


def dequantized(graph, env: dict, value: str) -> torch.Tensor:
    """The real (float64) value of the integer tensor ``env[value]``: ``q * 2**exp``."""
    return env[value].to(torch.float64) * 2.0 ** graph.values[value].exp


def _float_forward(n, a: list[torch.Tensor]) -> torch.Tensor:
    """One forward op of the float graph (the float interpreter's own, autograd-able)."""
    if n.op not in FORWARD:
        raise ValueError(f"device_forward_backprop: {n.op!r} is not a forward op")
    return float_eval(n, a)


def _float_loss(n, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The float loss whose gradient the loss_grad node ``n`` computes (numerics.md
    section 4): mean cross-entropy with the labels, or the teacher loss with a teacher's
    logits ``target``."""
    at = n.attrs
    kind = at.get("target", "labels")
    if kind == "labels":
        return torch.nn.functional.cross_entropy(z, target.long())
    return teacher_target_loss(z, target, kind, at.get("threshold"), at.get("temp"))


def device_forward_backprop(float_graph, graph, env: dict) -> dict[str, torch.Tensor]:
    """Float64 back-propagation through the DEVICE's forward pass, by PyTorch autograd.

    ``float_graph``: the masked training graph before quantization (``Compiled.float_graph``);
    ``graph``: the quantized graph (exponents, clamps); ``env``: a reference run of it
    (``run_reference``; only forward values are read, and the forward is deterministic).

    The forward ops of ``float_graph`` are re-executed in float64 with autograd, with the
    parameters set to the device's dequantized compute copies (int8 weights, int32 biases,
    frozen constants such as a BatchNorm's normalisation), and every forward value the
    device holds is REPLACED by its dequantized int8 value (straight-through: the value is
    the device's, the derivative that of the float op).  Where the device's output decides
    a derivative, it is read from that output, as the device does: a ReLU passes where its
    int8 output is > 0, a Hardtanh/ReLU6 where ``lo < y < hi`` with the device's integer
    clamp bounds; a max pool routes to the first maximum of its (device) input.  The loss
    is the float loss of the device's dequantized logits (mean CE: softmax - onehot over
    N).  Nothing is rounded in the backward.  Returns {trainable parameter: gradient},
    float64, in the parameter's graph shape; pruned channels get exactly zero (they are
    outside the mask views)."""
    G, Q = float_graph, graph
    vals: dict[str, torch.Tensor] = {}
    x = G.inputs[0]
    vals[x] = dequantized(Q, env, x)
    vals[G.inputs[1]] = env[G.inputs[1]]
    leaves = {}
    for name, p in G.params.items():
        t = dequantized(Q, env, p.value).reshape(G.values[p.value].shape)
        if p.trainable:
            t = t.clone().requires_grad_(True)
            leaves[name] = t
        vals[p.value] = t
    loss_node = None
    with torch.enable_grad():
        for n in G.nodes:
            if OP[n.op].phase == "loss":
                loss_node = n
                break
            a = [vals[i] for i in n.inputs]
            out = n.outputs[0]
            y = _float_forward(n, a)
            if OP[n.op].result != "view" and out in env and out in Q.values:
                dev = dequantized(Q, env, out)
                if n.op in ACTIVATIONS:
                    q = env[out]
                    lo, hi = (0, None) if n.op == "relu" else Q.producer(out).attrs["clamp"]
                    inside = q > lo if hi is None else (q > lo) & (q < hi)
                    y = torch.where(inside, a[0], torch.zeros_like(a[0]))
                y = y + (dev - y).detach()
            vals[out] = y
        if loss_node is None:
            raise ValueError("device_forward_backprop: the graph has no loss_grad node")
        z, target = (vals[i] for i in loss_node.inputs)
        grads = torch.autograd.grad(_float_loss(loss_node, z, target), list(leaves.values()),
                                    allow_unused=True)
    return {name: (g if g is not None else torch.zeros_like(leaves[name])).detach()
            for name, g in zip(leaves, grads)}


def device_grad(graph, env: dict, pname: str) -> torch.Tensor | None:
    """The fixed-point gradient of parameter ``pname`` in a reference run ``env``,
    dequantized (float64) and scattered into the parameter's graph shape through the
    mask view of its update (zero in pruned channels); None without a gradient."""
    p = graph.params[pname]
    v = f"grad:{pname}"
    sgd = next((n for n in graph.nodes if n.op == "sgd" and n.inputs[0] == p.value), None)
    if sgd is None or v not in env:
        return None
    full = torch.zeros(graph.values[p.value].shape, dtype=torch.float64)
    ix = _view_index(full, sgd.attrs)
    full[ix] = dequantized(graph, env, v).reshape(full[ix].shape)
    return full


#: the criterion: every trainable gradient's seed-averaged fixed-point value has at least
#: this cosine to device_forward_backprop, over at least SR_SEEDS stochastic-rounding seeds
THRESHOLD = 0.98
SR_SEEDS = 8


def backward_graph(graph):
    """(sub-graph, names of the values it takes): the nodes of ``graph`` from its loss
    gradient on, without the update.  The forward pass rounds to nearest only, so its
    values do not depend on the seed: a run of this sub-graph on a full run's forward
    values with seed ``s`` gives exactly the values a full run with seed ``s`` gives
    (tests/test_fidelity.py), at a fraction of the cost."""
    i0 = next(i for i, n in enumerate(graph.nodes) if n.op == "loss_grad")
    sub = dataclasses.replace(graph, nodes=[n for n in graph.nodes[i0:] if n.op != "sgd"])
    made = {o for n in sub.nodes for o in n.outputs}
    takes = set(graph.inputs) | {p.value for p in graph.params.values()}
    takes |= {f"master:{p}" for p in graph.params if f"master:{p}" in graph.values}
    takes |= {v for n in sub.nodes for v in n.inputs if v not in made}
    return sub, sorted(takes)


def seed_averaged_grads(graph, env0: dict, seeds) -> dict[str, torch.Tensor]:
    """{trainable parameter: its fixed-point gradient, dequantized, averaged over one
    reference run per seed in ``seeds``} (float64, graph shape, zero in pruned channels).
    ``env0``: a full run_reference of ``graph`` with seed ``seeds[0]``; the other seeds
    re-run only the backward (backward_graph) on env0's forward values."""
    names = [p for p, prm in graph.params.items() if prm.trainable]
    total = {p: device_grad(graph, env0, p) for p in names}
    total = {p: g for p, g in total.items() if g is not None}
    if len(seeds) > 1:
        sub, takes = backward_graph(graph)
        inputs = {v: env0[v] for v in takes if v in env0}
        for s in seeds[1:]:
            env = run_reference(sub, inputs, int(s) & 0xFFFFFFFF)
            for p in total:
                total[p] = total[p] + device_grad(graph, env, p)
    return {p: g / len(seeds) for p, g in total.items()}


def criterion_cosines(c, env0: dict, seed: int, k: int = SR_SEEDS) -> dict[str, float]:
    """{trainable parameter: cosine of its fixed-point gradient, averaged over the
    stochastic-rounding seeds seed..seed+k-1, to device_forward_backprop} on the batch of
    the reference run ``env0`` (seed ``seed``); {} without a float graph (a program
    resumed from an IR dump)."""
    if c.float_graph is None:
        return {}
    if k < 1:
        raise ValueError(f"--sr-seeds {k}: need at least one seed")
    want = device_forward_backprop(c.float_graph, c.graph, env0)
    got = seed_averaged_grads(c.graph, env0, [(seed + i) & 0xFFFFFFFF for i in range(k)])
    return {p: cosine_rel(g.numpy(), want[p].numpy())[0] for p, g in got.items()}
