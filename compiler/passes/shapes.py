"""Shape inference for graph ops (used after the mask pass changes channel counts).

``SHAPE_RULES`` holds one rule per op (op registry stage ``shape``): (input shapes, attrs)
-> the shape of output 0."""
from __future__ import annotations

from ..ir.graph import Graph, Node


def pool_out(h: int, k: int, s: int, p: int) -> int:
    return (h + 2 * p - k) // s + 1


def _conv(sh, a):
    (N, _, H, W), (O, _, KH, KW) = sh[0], sh[1]
    return (N, O, pool_out(H, KH, a["stride"][0], a["pad"][0]),
            pool_out(W, KW, a["stride"][1], a["pad"][1]))


def _maxpool(sh, a):
    N, C, H, W = sh[0]
    return (N, C, pool_out(H, a["kernel"][0], a["stride"][0], a["pad"][0]),
            pool_out(W, a["kernel"][1], a["stride"][1], a["pad"][1]))


def _reshape(sh, a):
    total = 1
    for d in sh[0]:
        total *= d
    tail = 1
    for d in a["shape"][2:]:
        tail *= d
    # flatten to (N, F), or unflatten to (N, C, H, W): channels follow the mask
    return (sh[0][0], total // sh[0][0] // tail, *a["shape"][2:])


def _conv_eb(sh, a):
    N, _, H, W = a["in_shape"]
    return (N, sh[1][1] * a.get("groups", 1), H, W)


def _wview(sh, a):
    full = sh[0]
    rows = full[0] if a["out_idx"] is None else len(a["out_idx"])
    if len(full) == 1:
        return (rows,)
    cols = full[1] if a["in_idx"] is None else len(a["in_idx"]) * a["in_block"]
    return (rows, cols, *full[2:])


def _concat(sh, a):
    N, _, *rest = sh[0]
    return (N, sum(s[1] for s in sh), *rest)


def _slice(sh, a):
    N, _, *rest = sh[0]
    return (N, a["c1"] - a["c0"], *rest)


def _first(sh, a):
    return sh[0]


SHAPE_RULES = {
    "conv": _conv,
    "linear": lambda sh, a: (sh[0][0], sh[1][0]),
    "relu": _first, "relu_bwd": _first, "loss_grad": _first, "hardtanh": _first,
    "hardtanh_bwd": _first, "add": _first, "sgd": _first,
    "maxpool_bwd": lambda sh, a: sh[1],
    "maxpool": _maxpool,
    "reshape": _reshape,
    "concat": _concat, "slice": _slice,
    "chmul": _first, "chmul_ds": lambda sh, a: (sh[0][0], sh[0][1], *(1 for _ in sh[0][2:])),
    "conv_eb": _conv_eb,
    "conv_wg": lambda sh, a: (sh[0][1], sh[1][1] // a.get("groups", 1), *a["kernel"]),
    "linear_eb": lambda sh, a: (sh[0][0], sh[1][1]),
    "linear_wg": lambda sh, a: (sh[0][1], sh[1][1]),
    "bias_grad": lambda sh, a: (sh[0][1],),
    "wview": _wview,
}


def infer(g: Graph, n: Node) -> tuple[int, ...]:
    rule = SHAPE_RULES.get(n.op)
    if rule is None:
        raise ValueError(f"no shape rule for {n.op}")
    return rule([g.values[v].shape for v in n.inputs], n.attrs)


def check_shapes(g: Graph) -> None:
    """Every node's declared output shape must be the one its op computes from its
    inputs (SHAPE_RULES); ValueError "node I (op in layer): ..." otherwise (Graph.verify's
    form, so a reader of a dump can locate it)."""
    for i, n in enumerate(g.nodes):
        rule = SHAPE_RULES.get(n.op)
        if rule is None or not n.outputs:
            continue
        where = f"node {i} ({n.op}{' in ' + n.layer if n.layer else ''})"
        try:
            want = tuple(rule([g.values[v].shape for v in n.inputs], n.attrs))
        except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError) as e:
            raise ValueError(f"{where}: the operand shapes "
                             f"{[list(g.values[v].shape) for v in n.inputs]} do not fit the "
                             f"op ({type(e).__name__}: {e})") from None
        have = tuple(g.values[n.outputs[0]].shape)
        if have != want:
            raise ValueError(f"{where}: %{n.outputs[0]} is declared {list(have)}, but the op "
                             f"computes {list(want)} from its operands")


def verify_graph(g: Graph) -> None:
    """The verifier run after every pass (and on a dump that resumes the pipeline):
    Graph.verify's structural checks, then the shapes."""
    g.verify()
    check_shapes(g)
