"""Autodiff pass: append the backward of a forward-only edgec graph.

Given a graph of forward ops (``conv``, ``linear``, ``relu``, ``maxpool``, ``reshape``)
with output ``logits``, :func:`derive_backward` adds the loss gradient (softmax
cross-entropy, mean: ``loss_grad`` -> ``loss.dz``) and, in reverse order, the input error
(``<base>.dx``) and parameter gradients (``grad:<param>``, also graph outputs) of every op
that a parameter reaches: the same ops and value names capture() takes from aten's joint
graph.  A parameter that gets no gradient is frozen (``meta["unused_params"]``).
"""
from __future__ import annotations

from edgec.isa.errors import EdgecError

from ..ir.graph import Graph, Node


class _Backward:
    """The graph being extended, and which values depend on a parameter."""

    def __init__(self, g: Graph):
        self.g = g
        self.pvals = {p.value: p for p in g.params.values()}
        self.needs = set(self.pvals)         # values that need a gradient
        for n in g.nodes:
            if any(i in self.needs for i in n.inputs):
                self.needs.update(n.outputs)

    def new(self, op, ins, name, shape, attrs, n: Node) -> str:
        """Add backward ``op`` -> ``name``, in ``n``'s layer (``loss`` for the loss)."""
        self.g.add_value(name, shape)
        self.g.add_node(op, ins, [name], attrs, layer=n.layer if op != "loss_grad" else "loss",
                        loc=n.loc)
        return name

    def param_grad(self, op, ins, pval: str, attrs, n: Node) -> None:
        """``grad:<param>`` of parameter value ``pval``, also a graph output."""
        p = self.pvals[pval]
        self.new(op, ins, f"grad:{p.name}", self.g.values[pval].shape, attrs, n)
        self.g.outputs[f"grad:{p.name}"] = f"grad:{p.name}"


def _base_of(n: Node) -> str:
    return n.outputs[0][:-len(".out")] if n.outputs[0].endswith(".out") else n.outputs[0]


def _conv_linear_backward(ad: _Backward, n: Node, dy: str, grad: dict) -> None:
    """Input error (when the input needs one), weight gradient and bias gradient."""
    V, b = ad.g.values, _base_of(n)
    x, w = n.inputs[0], n.inputs[1]
    if x in ad.needs:
        if n.op == "conv":
            xs = V[x].shape
            grad[x] = ad.new("conv_eb", [dy, w], f"{b}.dx", xs,
                             {"stride": n.attrs["stride"], "pad": n.attrs["pad"],
                              "in_shape": xs}, n)
        else:
            grad[x] = ad.new("linear_eb", [dy, w], f"{b}.dx", V[x].shape, {}, n)
    if n.op == "conv":
        ad.param_grad("conv_wg", [dy, x], w, {"stride": n.attrs["stride"],
                                              "pad": n.attrs["pad"],
                                              "kernel": tuple(V[w].shape[2:])}, n)
    else:
        ad.param_grad("linear_wg", [dy, x], w, {}, n)
    if len(n.inputs) == 3:
        ad.param_grad("bias_grad", [dy], n.inputs[2], {}, n)


def _relu_input_error(ad: _Backward, n: Node, dy: str) -> str:
    x = n.inputs[0]
    return ad.new("relu_bwd", [dy, n.outputs[0]], f"{_base_of(n)}.dx", ad.g.values[x].shape,
                  {}, n)


def _maxpool_input_error(ad: _Backward, n: Node, dy: str) -> str:
    x = n.inputs[0]
    return ad.new("maxpool_bwd", [dy, x], f"{_base_of(n)}.dx", ad.g.values[x].shape,
                  dict(n.attrs), n)


def _reshape_input_error(ad: _Backward, n: Node, dy: str) -> str:
    xs = ad.g.values[n.inputs[0]].shape
    return ad.new("reshape", [dy], f"{_base_of(n)}.dx", xs, {"shape": xs}, n)


# forward op -> its input error, for ops without parameters
INPUT_ERROR = {
    "relu": _relu_input_error,
    "maxpool": _maxpool_input_error,
    "reshape": _reshape_input_error,
}


def derive_backward(g: Graph) -> Graph:
    """Append the loss gradient and the reverse-mode backward of ``g``'s forward ops
    (softmax cross-entropy, mean): the same ops and value names capture() produces
    (``loss.dz``, ``<base>.dx``, ``grad:<param>``)."""
    fwd = list(g.nodes)
    z = g.outputs["logits"]
    ad = _Backward(g)
    grad = {z: ad.new("loss_grad", [z, "labels"], "loss.dz", g.values[z].shape, {},
                      g.producer(z))}
    for n in reversed(fwd):
        o = n.outputs[0]
        if o not in grad:
            continue
        dy, x = grad[o], n.inputs[0]
        if n.op in ("conv", "linear"):
            _conv_linear_backward(ad, n, dy, grad)
        elif x not in ad.needs:
            continue
        elif n.op in INPUT_ERROR:
            grad[x] = INPUT_ERROR[n.op](ad, n, dy)
        else:
            raise EdgecError(f"internal error: no backward for op {n.op}")
    for p in g.params.values():
        if f"grad:{p.name}" not in g.outputs:
            p.trainable = False
            g.meta.setdefault("unused_params", []).append(p.name)
    return g
