"""Tile pass: graph -> loop IR.  A fixed, simple choice: start from whole tensors and
halve the dim with the highest priority until every tile fits its buffer.  Tensors never
have to fit on chip; only tiles do, twice: every tile is double-buffered (codegen puts
consecutive tiles in alternate halves so the load, compute and store queues overlap), or
once where not even the smallest tile fits twice (`fitted`, `copies`)."""
from __future__ import annotations

from edgec.isa.errors import EdgecError
from edgec.isa.target import Target

from ..ir.graph import Graph
from ..ir.loops import LoopNest
from ..ir.ops import ELTWISE, MAC_BASE, MAC_OPS, REGISTRY as OP
from .schedule import search as schedule_search
from .tilefit import (PRIORITY, bias_grad_fits, copies, fitted, gate_fits, geometry, in_block,
                      mac_tile_ok, sgd_fits, sgd_geometry, shrink, tile_fits)


def _mac_tiles(g: Graph, n, tg: Target, search: str, where: str):
    """A MAC nest: the shrink heuristic's start, then the schedule search."""
    G = geometry(g, n)
    kind = OP[n.op].mac.lower()
    base = MAC_BASE[OP[n.op].mac]
    unit: dict[str, int] = {}
    dims = {"n": G["N"], "g": G["G"], "co": G["O"] // G["G"], "ci": G["C"] // G["G"]}
    dims["oh" if base != "conv_eb" else "ih"] = G["OH"] if base != "conv_eb" else G["H"]
    blk = in_block(g, n)
    if blk > 1:
        unit["ci"] = blk
    fits = lambda t, k: mac_tile_ok(base, G, t, tg, k)                  # noqa: E731
    t = fitted(lambda f: shrink(dims, unit, f, PRIORITY[base], where), fits, where)
    t = schedule_search(base, G, dims, unit, tg, kind == "fp" and len(n.inputs) == 3,
                        search, t, where, copies(fits, t))
    return dims, t, unit


def _eltwise_tiles(g: Graph, n, tg: Target, search: str, where: str):
    total = 1
    for d in g.values[n.outputs[0]].shape:
        total *= d
    dims = {"e": total}
    return dims, {"e": min(total, max(1, tg.ibuf // 4), max(1, tg.wbuf // 2), 65535)}, {}


def _pool_tiles(g: Graph, n, tg: Target, search: str, where: str):
    V = g.values
    N, C, H, W = V[n.inputs[0] if n.op == "maxpool" else n.inputs[1]].shape
    oh, ow = (V[n.outputs[0]].shape[2:] if n.op == "maxpool"
              else V[n.inputs[0]].shape[2:])
    dims = {"p": N * C}
    per = H * W + oh * ow
    cap = min(tg.ibuf // (2 * per) if n.op == "maxpool" else tg.ibuf // (4 * H * W),
              tg.wbuf // (2 * oh * ow), 65535)                # ping-pong halves
    if cap < 1:     # single buffering
        cap = min(tg.ibuf // per if n.op == "maxpool" else tg.ibuf // (2 * H * W),
                  tg.wbuf // (oh * ow), 65535)
    if cap < 1:
        raise EdgecError(f"{where}: one {H}x{W} plane does not fit the buffers")
    return dims, {"p": min(N * C, cap)}, {}


def _channel_sum_tiles(g: Graph, n, tg: Target, search: str, where: str):
    """bias_grad / bn_adapt: channels by batch of an [N,C,...] input."""
    s = g.values[n.inputs[0]].shape
    hw = 1
    for d in s[2:]:
        hw *= d
    dims = {"c": s[1], "n": s[0]}
    if n.op == "bn_adapt":       # sums, squares, bias in ABUF; single-buffered
        t = shrink(dims, {}, lambda t: t["n"] * t["c"] * hw + t["c"] <= tg.ibuf
                   and 3 * t["c"] <= tg.abuf, ("n", "c"), where)
    else:
        t = fitted(lambda f: shrink(dims, {}, f, ("n", "c"), where),
                   lambda t, k: bias_grad_fits(t, hw, tg, k), where)
    return dims, t, {}


def _loss_tiles(g: Graph, n, tg: Target, search: str, where: str):
    N, K = g.values[n.inputs[0]].shape
    teacher = n.attrs.get("target", "labels") != "labels"    # LOSST: t and TLUT
    luts = 256 * n.attrs.get("nlut", 1)
    if (3 if teacher else 2) * N * K > tg.ibuf or \
            (luts + 256 if teacher else N + luts) > tg.abuf:
        raise EdgecError(f"{where}: logits [{N},{K}] do not fit the buffers")
    dims = {"n": N}
    return dims, dims, {}


def _sgd_tiles(g: Graph, n, tg: Target, search: str, where: str):
    rows, blocks, inner = sgd_geometry(g, n)
    dims = {"r": rows, "b": blocks}
    t = fitted(lambda f: shrink(dims, {}, f, ("r", "b"), where),
               lambda t, k: sgd_fits(t, inner, tg, k, bool(n.attrs.get("mom"))),
               where)
    return dims, t, {}


def _channel_copy_tiles(g: Graph, n, tg: Target, search: str, where: str):
    """concat / slice: batch by output channels, the whole planes of each (a copy
    through IBUF)."""
    s = g.values[n.outputs[0]].shape
    hw = 1
    for d in s[2:]:
        hw *= d
    dims = {"n": s[0], "c": s[1]}
    t = fitted(lambda f: shrink(dims, {}, f, ("n", "c"), where),
               lambda t, k: k * t["n"] * t["c"] * hw <= tg.ibuf, where)
    return dims, t, {}


def _gate_tiles(g: Graph, n, tg: Target, search: str, where: str):
    """chmul / chmul_ds: tiles of whole (n, c) planes; IBUF [a0 | a1 | d0 | d1], WBUF
    [b0 | b1] (chmul: one gate value per plane), ABUF the int32 products or plane sums."""
    s = g.values[n.inputs[0]].shape
    hw = 1
    for d in s[2:]:
        hw *= d
    dims = {"p": s[0] * s[1]}
    ds = n.op == "chmul_ds"
    t = fitted(lambda f: shrink(dims, {}, f, ("p",), where),
               lambda t, k: gate_fits(t["p"], hw, ds, tg, k), where)
    return dims, t, {}


#: one tiling rule per materialised op (op registry stage ``tiling``):
#: (graph, node, target, search, where) -> (dims, tile sizes, units)
TILE_RULES = {
    **{op: _mac_tiles for op in sorted(MAC_OPS)},
    **{op: _eltwise_tiles for op in sorted(ELTWISE)},
    "maxpool": _pool_tiles, "maxpool_bwd": _pool_tiles,
    "bias_grad": _channel_sum_tiles, "bn_adapt": _channel_sum_tiles,
    "loss_grad": _loss_tiles,
    "sgd": _sgd_tiles,
    "concat": _channel_copy_tiles, "slice": _channel_copy_tiles,
    "chmul": _gate_tiles, "chmul_ds": _gate_tiles,
}


def tile_graph(g: Graph, tg: Target, search: str = "greedy") -> list[LoopNest]:
    """One loop nest per materialised op.  MAC nests get their tile sizes from the
    schedule search (schedule.py; `search` = greedy or exhaustive), starting from the
    shrink heuristic below; the other nests take the largest tile that fits."""
    nests = []
    for i, n in enumerate(g.nodes):
        if not OP[n.op].materialised:
            continue
        where = f"{n.loc or '?'}: layer {n.layer!r} ({n.op})"
        rule = TILE_RULES.get(n.op)
        if rule is None:
            raise EdgecError(f"{where}: no lowering for op {n.op!r}")
        dims, t, unit = rule(g, n, tg, search, where)
        par, red = OP[n.op].nest
        nest = LoopNest(i, n.op, n.layer, dict(dims), dict(t), par + red, unit)
        nest.verify()
        nests.append(nest)
    return nests
