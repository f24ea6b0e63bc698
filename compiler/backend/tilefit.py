"""What a tile is and whether it fits: the geometry of MAC ops, the buffer words of a tile
(`tile_words`), the group rule of MAC tiles (`group_rule_error`), the fit tests of every
nest kind (`tile_fits`, `mac_tile_ok`, `bias_grad_fits`, `sgd_fits`),
double or single buffering (`fitted`, `copies`) and the halving heuristic (`shrink`).  The
tile pass (tiling.py), the schedule search (schedule.py), codegen and resume share them."""
from __future__ import annotations

from edgec.isa.errors import EdgecError
from edgec.isa.target import Target

from ..ir.graph import Graph
from ..ir.ops import LINEAR_OPS, MAC_WG


def geometry(g: Graph, n) -> dict:
    """Unified conv view of conv/linear ops: shapes as 4-D NCHW, kernel, stride, pad."""
    V = g.values
    a = n.attrs
    if n.op.startswith("linear"):
        one = dict(kh=1, kw=1, sh=1, sw=1, ph=0, pw=0, H=1, W=1, OH=1, OW=1, G=1)
        if n.op == "linear":
            x, w = V[n.inputs[0]].shape, V[n.inputs[1]].shape
            return dict(one, N=x[0], C=x[1], O=w[0])
        if n.op == "linear_eb":
            dy, w = V[n.inputs[0]].shape, V[n.inputs[1]].shape
            return dict(one, N=dy[0], C=w[1], O=w[0])
        dy, x = V[n.inputs[0]].shape, V[n.inputs[1]].shape
        return dict(one, N=dy[0], C=x[1], O=dy[1])
    (sh, sw), (ph, pw) = a["stride"], a["pad"]
    if n.op == "conv":
        (N, C, H, W), (O, _, kh, kw) = V[n.inputs[0]].shape, V[n.inputs[1]].shape
        _, _, OH, OW = V[n.outputs[0]].shape
    elif n.op == "conv_eb":
        (N, O, OH, OW), (_, _, kh, kw) = V[n.inputs[0]].shape, V[n.inputs[1]].shape
        _, C, H, W = V[n.outputs[0]].shape
    else:
        (N, O, OH, OW), (_, C, H, W) = V[n.inputs[0]].shape, V[n.inputs[1]].shape
        kh, kw = a["kernel"]
    return dict(N=N, C=C, O=O, H=H, W=W, OH=OH, OW=OW, kh=kh, kw=kw, sh=sh, sw=sw,
                ph=ph, pw=pw, G=int(a.get("groups", 1)))


def x_rows(G: dict, oht: int) -> int:
    """Input rows an output-row tile of height oht needs."""
    return min(G["H"], (oht - 1) * G["sh"] + G["kh"])


def y_rows(G: dict, iht: int) -> int:
    """Output rows that can reach an input-row tile of height iht (upper bound)."""
    return min(G["OH"], -(-(iht + G["kh"] - 1) // G["sh"]))


def in_block(g: Graph, n) -> int:
    """Channels of a linear's input come in blocks (H*W after a masked flatten)."""
    w = g.producer(n.inputs[1]) if n.op in LINEAR_OPS - MAC_WG else None
    if w is not None and w.op == "wview" and w.attrs["in_idx"] is not None:
        return w.attrs["in_block"]
    if n.op == "linear_wg":
        for m in g.nodes:
            if m.op == "sgd" and g.outputs.get(f"grad:{g.param_of_value(m.inputs[0]).name}") \
                    == n.outputs[0] and m.attrs["in_idx"] is not None:
                return m.attrs["in_block"]
    return 1


def sgd_geometry(g: Graph, n) -> tuple[int, int, int]:
    """(rows, blocks, elements per block) of the mask view an sgd node updates."""
    if len(n.inputs) >= 3:
        gshape = g.values[n.inputs[2]].shape
    else:           # no gradient (attr ng): a bias, rows out_idx
        out_idx = n.attrs["out_idx"]
        gshape = (len(out_idx) if out_idx is not None else g.values[n.inputs[0]].shape[0],)
    row = 1
    for d in gshape[1:]:
        row *= d
    inner = 1
    if len(gshape) > 1:
        inner = (row // gshape[1]) * (n.attrs["in_block"] if n.attrs["in_idx"] is not None
                                      else 1)
    return gshape[0], row // inner, inner


def tile_words(op: str, G: dict, t: dict) -> dict[str, tuple[int, int]]:
    """Buffer elements one tile of a MAC nest occupies, as {buffer: (input part, output
    part)} for ibuf, wbuf, abuf (op = conv, conv_eb or conv_wg; linear ops use the same
    shapes).  Both parts are double-buffered (ping-pong halves: loads of the next tile
    overlap compute on this one), so a buffer must hold 2 * (input + output).  ``t`` holds
    the tile sizes; ``ci``/``co`` are per group and ``g`` groups share the tile."""
    kk = G["kh"] * G["kw"]
    gi, go = t["g"] * t["ci"], t["g"] * t["co"]         # channels of all groups in the tile
    w = go * t["ci"] * kk                                  # weights [g*co, ci, kh, kw]
    if op == "conv":
        out = t["n"] * go * t["oh"] * G["OW"]
        return {"ibuf": (t["n"] * gi * x_rows(G, t["oh"]) * G["W"], out), "wbuf": (w, 0),
                "abuf": (0, out)}
    if op == "conv_eb":
        out = t["n"] * gi * t["ih"] * G["W"]
        return {"ibuf": (t["n"] * go * y_rows(G, t["ih"]) * G["OW"], out), "wbuf": (w, 0),
                "abuf": (0, out)}
    return {"ibuf": (t["n"] * gi * x_rows(G, t["oh"]) * G["W"], w),
            "wbuf": (t["n"] * go * t["oh"] * G["OW"], 0), "abuf": (0, w)}


def tile_fits(op: str, G: dict, t: dict, tg: Target, copies: int = 1) -> bool:
    """Whether `copies` (2: double buffering) copies of a MAC tile fit the buffers."""
    u = tile_words(op, G, t)
    return all(copies * sum(u[b]) <= tg.buffer_size(b.upper()) for b in u)


GROUP_RULE = ("a MAC tile of several groups holds their whole channels: "
              "with g tile > 1, the co and ci tiles are the group's co and ci extents")


def group_rule_error(G: dict, t: dict) -> str | None:
    """None when MAC tile t obeys the group rule, else what breaks it.  Codegen's MAC nest
    addresses the input / output channels of a tile of g groups as one run of
    g * ci (g * co) channels from the tile's first group on, which is right only when
    every group of the tile is whole (GROUP_RULE); a tile of one group may cut its
    channels anywhere."""
    cg, og = G["C"] // G["G"], G["O"] // G["G"]
    if t["g"] > 1 and (t["ci"] != cg or t["co"] != og):
        return (f"g tile {t['g']} with co tile {t['co']}, ci tile {t['ci']} (groups of "
                f"co {og}, ci {cg}): {GROUP_RULE}")
    return None


def mac_tile_ok(op: str, G: dict, t: dict, tg: Target, copies: int = 1) -> bool:
    """The one test every MAC tile passes (tile pass, schedule search, resume, codegen):
    the group rule and `copies` copies in the buffers."""
    return group_rule_error(G, t) is None and tile_fits(op, G, t, tg, copies)


def bias_grad_fits(t: dict, hw: int, tg: Target, copies: int = 1) -> bool:
    """dY tile [n, c, hw] and the int8 result [c] in IBUF (copies of each), the int32
    sums in ABUF."""
    return copies * (t["n"] * t["c"] * hw + t["c"]) <= tg.ibuf and t["c"] <= tg.abuf


def gate_fits(p: int, hw: int, ds: bool, tg: Target, copies: int = 1) -> bool:
    """chmul (ds=False) / chmul_ds tile of p planes of hw: A [p, hw] and the int8 result
    ([p, hw] / [p]) in IBUF, B ([p] / [p, hw]) in WBUF, the int32 C ([p, hw] / [p]) in
    ABUF (copies of each); DMA and RQ extents fit 16 bits."""
    wide, narrow = p * hw, p
    out, b = (narrow, wide) if ds else (wide, narrow)
    return (copies * (wide + out) <= tg.ibuf and copies * b <= tg.wbuf
            and copies * out <= tg.abuf and wide <= 65535)


def sgd_fits(t: dict, inner: int, tg: Target, copies: int = 1, mom: bool = False) -> bool:
    """Master tile, a (wide) compute copy and (mom) the momentum tile in ABUF; gradient /
    int8 copy in IBUF / WBUF (copies of each)."""
    m = t["r"] * t["b"] * inner
    return copies * (3 if mom else 2) * m <= tg.abuf and copies * m <= min(tg.ibuf, tg.wbuf)


def fitted(shrink, fits, what):
    """The tile of `shrink(fits_for_copies)` for double buffering if one fits, else for
    single buffering (no overlap, but the same program; codegen derives the copies from
    the tile sizes with `copies`)."""
    try:
        return shrink(lambda t: fits(t, 2))
    except EdgecError:
        return shrink(lambda t: fits(t, 1))


def copies(fits, t) -> int:
    """2 when tile t fits twice (double buffering), else 1."""
    return 2 if fits(t, 2) else 1


# g shrinks before ci/co, so the heuristic keeps the group rule (group_rule_error);
# ("ci", "co") halves the larger of the two, keeping both wide for the MAC array
PRIORITY = {"conv": ("n", "oh", "g", ("ci", "co")), "conv_eb": ("n", "ih", "g", ("co", "ci")),
             "conv_wg": ("n", "oh", "g", ("ci", "co"))}


def shrink(dims, unit, fits, priority, what) -> dict:
    t = dict(dims)
    while not fits(t):
        for d in priority:
            if isinstance(d, tuple):      # the larger (in units) of a pair
                d = max(d, key=lambda k: (t[k] // unit.get(k, 1), -d.index(k)))
            u = unit.get(d, 1)
            if t[d] > u:
                t[d] = max(u, (t[d] // u + 1) // 2 * u)
                break
        else:
            raise EdgecError(f"{what}: even the smallest tile does not fit the target's "
                             "buffers; use a target with larger buffers")
    return t
