"""Autodiff pass: append the backward of a forward-only edgec graph.

Given a graph of forward ops (``conv`` -- grouped, BatchNorm and average pooling
included --, ``linear``, ``relu``, ``hardtanh``, ``maxpool``, ``add``, ``reshape``) with
output ``logits``, :func:`derive_backward` adds the loss gradient (softmax cross-entropy,
mean: ``loss_grad`` -> ``loss.dz``) and, in reverse order, the input error (``<base>.dx``)
and parameter gradients (``grad:<param>``, also graph outputs) of every op that a trainable
parameter reaches; a value read by several ops (a residual connection) gets the sum of
their errors (``add`` with ``grad: True``).  These are the same ops and value names
capture() takes from aten's joint graph.  Frozen constants (BatchNorm normalisation,
average-pool weights) get no gradient; a parameter that gets none is frozen
(``meta["unused_params"]``).
"""
from __future__ import annotations

from edgec.isa.errors import EdgecError

from ..ir.graph import Graph, Node


class _Backward:
    """The graph being extended, which values depend on a trainable parameter, and the
    gradient of each forward value met so far."""

    def __init__(self, g: Graph):
        self.g = g
        self.pvals = {p.value: p for p in g.params.values()}
        self.needs = {p.value for p in g.params.values() if not p.is_const}
        for n in g.nodes:
            if any(i in self.needs for i in n.inputs):
                self.needs.update(n.outputs)
        self.grad: dict[str, str] = {}

    def new(self, op, ins, name, shape, attrs, n: Node) -> str:
        """Add backward ``op`` -> ``name``, in ``n``'s layer (``loss`` for the loss)."""
        self.g.add_value(name, shape)
        self.g.add_node(op, ins, [name], attrs, layer=n.layer if op != "loss_grad" else "loss",
                        loc=n.loc)
        return name

    def param_grad(self, op, ins, pval: str, attrs, n: Node) -> None:
        """``grad:<param>`` of parameter value ``pval``, also a graph output (none for a
        frozen constant)."""
        p = self.pvals[pval]
        if p.is_const:
            return
        self.new(op, ins, f"grad:{p.name}", self.g.values[pval].shape, attrs, n)
        self.g.outputs[f"grad:{p.name}"] = f"grad:{p.name}"

    def deliver(self, x: str, dx: str) -> None:
        """``dx`` is (a part of) the error of forward value ``x``: a second part is summed
        with the first right away (``<producer base>.dsum``), as autograd accumulates."""
        if x not in self.needs:
            return
        old = self.grad.get(x)
        if old is None:
            self.grad[x] = dx
            return
        prod = self.g.producer(x)
        b = _base_of(prod) if prod is not None else x
        self.grad[x] = self.new("add", [old, dx], self.g.fresh(f"{b}.dsum"),
                                self.g.values[x].shape, {"grad": True},
                                prod if prod is not None else self.g.producer(dx))


def _base_of(n: Node) -> str:
    o = n.outputs[0]
    for suffix in (".out", ".xhat"):
        if o.endswith(suffix):
            return o[:-len(suffix)]
    return o


def _groups(n: Node) -> dict:
    return {"groups": n.attrs["groups"]} if "groups" in n.attrs else {}


def _conv_linear_backward(ad: _Backward, n: Node, dy: str) -> None:
    """Input error (when the input needs one), weight gradient and bias gradient."""
    V, b = ad.g.values, _base_of(n)
    x, w = n.inputs[0], n.inputs[1]
    dx = None
    if x in ad.needs:
        if n.op == "conv":
            xs = V[x].shape
            dx = ad.new("conv_eb", [dy, w], f"{b}.dx", xs,
                        {"stride": n.attrs["stride"], "pad": n.attrs["pad"],
                         "in_shape": xs, **_groups(n)}, n)
        else:
            dx = ad.new("linear_eb", [dy, w], f"{b}.dx", V[x].shape, {}, n)
    if n.op == "conv":
        ad.param_grad("conv_wg", [dy, x], w, {"stride": n.attrs["stride"],
                                              "pad": n.attrs["pad"],
                                              "kernel": tuple(V[w].shape[2:]),
                                              **_groups(n)}, n)
    else:
        ad.param_grad("linear_wg", [dy, x], w, {}, n)
    if len(n.inputs) == 3:
        ad.param_grad("bias_grad", [dy], n.inputs[2], {}, n)
    if dx is not None:
        ad.deliver(x, dx)


def _batchnorm_backward(ad: _Backward, n: Node, norm: Node, dy: str) -> None:
    """BatchNorm ``out = conv(xhat, gamma, beta)`` after ``xhat = conv(x, scale[, shift])``
    (``norm``): the errors through gamma (``<bn>.dxhat``) and scale (``<bn>.dx``), then
    gamma's and beta's gradients, as capture() has them."""
    V, b = ad.g.values, _base_of(n)
    x, xhat, gamma = norm.inputs[0], n.inputs[0], n.inputs[1]
    one = {"stride": (1, 1), "pad": (0, 0), **_groups(n)}
    xs = V[x].shape
    dx = None
    if x in ad.needs:
        d = ad.new("conv_eb", [dy, gamma], f"{b}.dxhat", xs, {**one, "in_shape": xs}, n)
        dx = ad.new("conv_eb", [d, norm.inputs[1]], f"{b}.dx", xs, {**one, "in_shape": xs},
                    norm)
    ad.param_grad("conv_wg", [dy, xhat], gamma, {**one, "kernel": (1, 1)}, n)
    if len(n.inputs) == 3:
        ad.param_grad("bias_grad", [dy], n.inputs[2], {}, n)
    if dx is not None:
        ad.deliver(x, dx)


def _bn_norm(ad: _Backward, n: Node) -> Node | None:
    """The normalising conv (weight kind ``bn_scale``) a BatchNorm's ``n`` reads."""
    if n.op != "conv":
        return None
    prod = ad.g.producer(n.inputs[0])
    if prod is None or prod.op != "conv":
        return None
    p = ad.g.param_of_value(prod.inputs[1])
    return prod if p is not None and p.kind == "bn_scale" else None


def _relu_input_error(ad: _Backward, n: Node, dy: str) -> str:
    x = n.inputs[0]
    return ad.new("relu_bwd", [dy, n.outputs[0]], f"{_base_of(n)}.dx", ad.g.values[x].shape,
                  {}, n)


def _hardtanh_input_error(ad: _Backward, n: Node, dy: str) -> str:
    x = n.inputs[0]
    return ad.new("hardtanh_bwd", [dy, n.outputs[0]], f"{_base_of(n)}.dx",
                  ad.g.values[x].shape, dict(n.attrs), n)


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
    "hardtanh": _hardtanh_input_error,
    "maxpool": _maxpool_input_error,
    "reshape": _reshape_input_error,
}


def _backward_of(ad: _Backward, n: Node, dy: str, done: set) -> None:
    """The backward of forward node ``n`` whose output's error is ``dy``."""
    x = n.inputs[0]
    norm = _bn_norm(ad, n)
    if norm is not None:
        _batchnorm_backward(ad, n, norm, dy)
        done.add(id(norm))
    elif n.op in ("conv", "linear"):
        _conv_linear_backward(ad, n, dy)
    elif n.op == "add":
        for i in n.inputs:          # the error reaches both operands unchanged
            ad.deliver(i, dy)
    elif x not in ad.needs:
        return
    elif n.op in INPUT_ERROR:
        ad.deliver(x, INPUT_ERROR[n.op](ad, n, dy))
    else:
        raise EdgecError(f"internal error: no backward for op {n.op}")


def derive_backward(g: Graph) -> Graph:
    """Append the loss gradient and the reverse-mode backward of ``g``'s forward ops
    (softmax cross-entropy, mean): the same ops and value names capture() produces
    (``loss.dz``, ``<base>.dx``, ``<base>.dsum``, ``grad:<param>``)."""
    fwd = list(g.nodes)
    z = g.outputs["logits"]
    ad = _Backward(g)
    ad.grad[z] = ad.new("loss_grad", [z, "labels"], "loss.dz", g.values[z].shape, {},
                        g.producer(z))
    done: set = set()
    for n in reversed(fwd):
        o = n.outputs[0]
        if o in ad.grad and id(n) not in done:
            _backward_of(ad, n, ad.grad[o], done)
    for p in g.params.values():
        if not p.is_const and f"grad:{p.name}" not in g.outputs:
            p.trainable = False
            g.meta.setdefault("unused_params", []).append(p.name)
    return g
