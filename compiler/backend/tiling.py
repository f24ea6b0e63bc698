"""Tile pass: graph -> loop IR.  A fixed, simple choice: start from whole tensors and
halve the dim with the highest priority until every tile fits its buffer.  Tensors never
have to fit on chip; only tiles do, twice: every tile is double-buffered (codegen puts
consecutive tiles in alternate halves so the load, compute and store queues overlap), or
once where not even the smallest tile fits twice (`fitted`, `copies`)."""
from __future__ import annotations

from edgec.isa.errors import EdgecError
from edgec.isa.target import Target

from ..ir.graph import Graph
from ..ir.loops import NEST_DIMS, LoopNest
from .schedule import search as schedule_search
from .tilefit import (PRIORITY, bias_grad_fits, copies, fitted, geometry, in_block, sgd_fits,
                      sgd_geometry, shrink, tile_fits)


def tile_graph(g: Graph, tg: Target, search: str = "greedy") -> list[LoopNest]:
    """One loop nest per materialised op.  MAC nests get their tile sizes from the
    schedule search (schedule.py; `search` = greedy or exhaustive), starting from the
    shrink heuristic below; the other nests take the largest tile that fits."""
    nests = []
    V = g.values
    for i, n in enumerate(g.nodes):
        if n.op in ("wview", "reshape"):
            continue
        where = f"{n.loc or '?'}: layer {n.layer!r} ({n.op})"
        par, red = NEST_DIMS[n.op]
        unit: dict[str, int] = {}
        if n.op in NEST_DIMS and (n.op.startswith("conv") or n.op.startswith("linear")):
            G = geometry(g, n)
            kind = n.op.split("_")[-1] if "_" in n.op else "fp"
            base = {"fp": "conv", "eb": "conv_eb", "wg": "conv_wg"}[kind]
            dims = {"n": G["N"], "g": G["G"], "co": G["O"] // G["G"], "ci": G["C"] // G["G"]}
            dims["oh" if base != "conv_eb" else "ih"] = G["OH"] if base != "conv_eb" else G["H"]
            blk = in_block(g, n)
            if blk > 1:
                unit["ci"] = blk
            fits = lambda t, k: tile_fits(base, G, t, tg, k)                    # noqa: E731
            t = fitted(lambda f: shrink(dims, unit, f, PRIORITY[base], where), fits, where)
            t = schedule_search(base, G, dims, unit, tg, kind == "fp" and len(n.inputs) == 3,
                                search, t, where, copies(fits, t))
        elif n.op in ("relu", "relu_bwd", "hardtanh", "hardtanh_bwd", "add"):
            total = 1
            for d in V[n.outputs[0]].shape:
                total *= d
            dims = {"e": total}
            t = {"e": min(total, max(1, tg.ibuf // 4), max(1, tg.wbuf // 2), 65535)}
        elif n.op in ("maxpool", "maxpool_bwd"):
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
            t = {"p": min(N * C, cap)}
        elif n.op in ("bias_grad", "bn_adapt"):
            s = V[n.inputs[0]].shape
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
        elif n.op == "loss_grad":
            N, K = V[n.inputs[0]].shape
            teacher = n.attrs.get("target", "labels") != "labels"    # LOSST: t and TLUT
            luts = 256 * n.attrs.get("nlut", 1)
            if (3 if teacher else 2) * N * K > tg.ibuf or \
                    (luts + 256 if teacher else N + luts) > tg.abuf:
                raise EdgecError(f"{where}: logits [{N},{K}] do not fit the buffers")
            dims = t = {"n": N}
        elif n.op == "sgd":
            rows, blocks, inner = sgd_geometry(g, n)
            dims = {"r": rows, "b": blocks}
            t = fitted(lambda f: shrink(dims, {}, f, ("r", "b"), where),
                       lambda t, k: sgd_fits(t, inner, tg, k, bool(n.attrs.get("mom"))),
                       where)
        else:
            raise EdgecError(f"{where}: no lowering for op {n.op!r}")
        nest = LoopNest(i, n.op, n.layer, dict(dims), dict(t), par + red, unit)
        nest.verify()
        nests.append(nest)
    return nests
