"""Shape inference for graph ops (used after the mask pass changes channel counts)."""
from __future__ import annotations

from ..ir.graph import Graph, Node


def pool_out(h: int, k: int, s: int, p: int) -> int:
    return (h + 2 * p - k) // s + 1


def infer(g: Graph, n: Node) -> tuple[int, ...]:
    sh = [g.values[v].shape for v in n.inputs]
    a = n.attrs
    if n.op == "conv":
        (N, _, H, W), (O, _, KH, KW) = sh[0], sh[1]
        return (N, O, pool_out(H, KH, a["stride"][0], a["pad"][0]),
                pool_out(W, KW, a["stride"][1], a["pad"][1]))
    if n.op == "linear":
        return (sh[0][0], sh[1][0])
    if n.op in ("relu", "relu_bwd", "loss_grad", "hardtanh", "hardtanh_bwd", "add"):
        return sh[0]
    if n.op == "maxpool_bwd":
        return sh[1]
    if n.op == "maxpool":
        N, C, H, W = sh[0]
        return (N, C, pool_out(H, a["kernel"][0], a["stride"][0], a["pad"][0]),
                pool_out(W, a["kernel"][1], a["stride"][1], a["pad"][1]))
    if n.op == "reshape":
        total = 1
        for d in sh[0]:
            total *= d
        tail = 1
        for d in a["shape"][2:]:
            tail *= d
        # flatten to (N, F), or unflatten to (N, C, H, W): channels follow the mask
        return (sh[0][0], total // sh[0][0] // tail, *a["shape"][2:])
    if n.op == "conv_eb":
        N, _, H, W = a["in_shape"]
        return (N, sh[1][1] * a.get("groups", 1), H, W)
    if n.op == "conv_wg":
        return (sh[0][1], sh[1][1] // a.get("groups", 1), *a["kernel"])
    if n.op == "linear_eb":
        return (sh[0][0], sh[1][1])
    if n.op == "linear_wg":
        return (sh[0][1], sh[1][1])
    if n.op == "bias_grad":
        return (sh[0][1],)
    if n.op == "wview":
        full = sh[0]
        rows = full[0] if a["out_idx"] is None else len(a["out_idx"])
        if len(full) == 1:
            return (rows,)
        cols = full[1] if a["in_idx"] is None else len(a["in_idx"]) * a["in_block"]
        return (rows, cols, *full[2:])
    if n.op == "sgd":
        return sh[0]
    raise ValueError(f"no shape rule for {n.op}")
