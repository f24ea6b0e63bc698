"""Schedule search for MAC loop nests: tile sizes chosen against an analytic cost model
of the double-buffered load / compute / store pipeline (isa/table.py, isa/timeline.py).

Cost model of one nest (`nest_cost`).  Codegen runs one *step* per (output tile,
reduction tile): loads (input box, weight box, the bias broadcast on the first step of
an FP output tile), one MAC; each output tile ends with RQ and one store.  Per step the
model takes the instruction costs the machine charges (DMA: latency + ceil(bytes /
bytes per cycle); MAC: array passes; vector: 4 + ceil(elements / lanes)) from the tile
shapes, edge tiles included (input rows are counted at their un-clipped height), and
sums each queue's busy cycles and the DDR port's transfer cycles.  With two buffer halves
the queues overlap, so the nest takes

    max(all loads + last step's compute + last store,        (load-bound)
        first step's loads + all compute + last store,        (compute-bound)
        first step's loads + first compute + all stores,      (store-bound)
        latency + all DDR transfers)                          (port-bound)

(the longest chain through the bottleneck: the pipeline fills before it, drains after).
tests/test_schedule.py checks it against the emulator's timing: within 10% summed over a
model's MAC nests and 35% per nest (most nests within 5%; it misses edge rows, the DDR
port's first-fit order and the load queue stalling behind a tile that waits for its
buffer half).

Search space: a tile size per dim from the halving ladder D, ceil(D/2), ceil(D/4) ... 1
(multiples of the dim's unit), restricted to tiles that keep the group rule and whose
double-buffered footprint fits the buffers (tilefit.mac_tile_ok).  `exhaustive` scores
every combination; `greedy` (the default) starts from whole-tensor tiles shrunk to fit and then takes the best move while
one lowers the cost: one dim one or two ladder steps down, or one dim up with the other
dims shrunk again until the tile fits (`_neighbours`).  Loop order: the parallel dims
keep their default order and the reduction dims stay innermost; codegen reloads every
operand per step, so under this model the order of the parallel dims does not change the
cost and is not searched.

Second objective: program size.  Many tilings come within a hair of the fastest (small
tiles fill and drain the pipeline a little sooner; large ones need fewer instructions for
the same MACs), so both modes then take, among the tiles whose modeled cycles are within
TOLERANCE of the best found, the one with the fewest instructions (`nest_instructions`;
ties: fewer cycles).  Fewer instructions mean a smaller prog.bin, less instruction fetch,
and less work for the compiler and the emulator, which spend their time per instruction.
Greedy reaches it by a second descent from its fastest tile: moves that cut instructions
while the cycles stay within the tolerance.
"""
from __future__ import annotations

import itertools

from edgec.isa.errors import EdgecError
from edgec.isa.machine import dma_cycles, vector_cycles
from edgec.isa.target import Target

from .tilefit import PRIORITY, mac_tile_ok, shrink, x_rows, y_rows

MODES = ("greedy", "exhaustive")
TOLERANCE = 0.01        # cycles given up (relative) for a program with fewer instructions


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _classes(extent: int, tile: int) -> list[tuple[int, int]]:
    """(tile size, how many tiles) along one dim."""
    full, rem = divmod(extent, tile)
    return [(tile, full)] + ([(rem, 1)] if rem else [])


def nest_cost(base: str, G: dict, dims: dict, t: dict, tg: Target, bias: bool = False,
              detail: bool = False):
    """Modeled cycles of a MAC nest (base = conv, conv_eb or conv_wg) with tiles t
    (bias: an FP nest whose accumulator starts from the broadcast bias)."""
    dma = lambda b: dma_cycles(b, tg)       # noqa: E731
    vec = lambda n: vector_cycles(n, tg)    # noqa: E731
    kk = G["kh"] * G["kw"]
    sp = "ih" if base == "conv_eb" else "oh"
    par = ["n", "g", "co", "ci", sp] if base != "conv_wg" else ["g", "co", "ci"]
    red = {"conv": ["ci"], "conv_eb": ["co"], "conv_wg": ["n", sp]}[base]
    par = [d for d in par if d not in red]
    load = comp = store = port = 0
    first = last = None         # (loads, compute, store) of the first / last step
    for pc in itertools.product(*(_classes(dims[d], t[d]) for d in par)):
        p = dict(zip(par, (s for s, _ in pc)))
        p_mult = 1
        for _, m in pc:
            p_mult *= m
        out_l = out_c = out_s = out_p = 0
        for rc in itertools.product(*(_classes(dims[d], t[d]) for d in red)):
            s = {**p, **dict(zip(red, (z for z, _ in rc)))}
            r_mult = 1
            for _, m in rc:
                r_mult *= m
            gi, go = s["g"] * s["ci"], s["g"] * s["co"]
            w = go * s["ci"] * kk
            if base == "conv":
                boxes = [s["n"] * gi * x_rows(G, s[sp]) * G["W"], w]
                mac = s["n"] * s[sp] * G["OW"] * kk * tg.mac_group_passes(s["ci"], s["co"], s["g"])
            elif base == "conv_eb":
                yr = y_rows(G, s[sp])
                boxes = [s["n"] * go * yr * G["OW"], w]
                mac = s["n"] * yr * G["OW"] * kk * tg.mac_group_passes(s["co"], s["ci"], s["g"])
            else:
                boxes = [s["n"] * go * s[sp] * G["OW"], s["n"] * gi * x_rows(G, s[sp]) * G["W"]]
                mac = s["n"] * s[sp] * G["OW"] * kk * tg.mac_group_passes(s["co"], s["ci"], s["g"])
            lc = sum(dma(b) for b in boxes)
            out_l += r_mult * lc
            out_p += r_mult * sum(dma(b) - tg.ddr_latency for b in boxes)
            out_c += r_mult * mac
        if base == "conv":
            out = p["n"] * p["g"] * p["co"] * p[sp] * G["OW"]
            if bias:                    # broadcast into the accumulator, first step
                lc += dma(4 * out)
                out_l += dma(4 * out)
                out_p += dma(4 * out) - tg.ddr_latency
        elif base == "conv_eb":
            out = p["n"] * p["g"] * p["ci"] * p[sp] * G["W"]
        else:
            out = p["g"] * p["co"] * p["ci"] * kk
        out_c += vec(out)
        out_s += dma(out)
        out_p += dma(out) - tg.ddr_latency
        last = (lc, mac + vec(out), dma(out))
        if first is None:
            first = (lc, mac, dma(out))
        load += p_mult * out_l
        comp += p_mult * out_c
        store += p_mult * out_s
        port += p_mult * out_p
    # the longest chain through the bottleneck: the pipeline fills before it, drains after
    cyc = max(load + last[1] + last[2],                     # load-bound
              first[0] + comp + last[2],                    # compute-bound
              first[0] + first[1] + store,                  # store-bound
              tg.ddr_latency + port)                                 # DDR port
    if detail:
        return dict(cycles=cyc, load=load, compute=comp, store=store, port=port)
    return cyc


def ladder(extent: int, unit: int = 1) -> list[int]:
    """Candidate tile sizes: extent, then repeated halving (rounded up to the unit)."""
    out, t = [extent], extent
    while t > unit:
        t = max(unit, (t // unit + 1) // 2 * unit)
        out.append(t)
    return out


def nest_instructions(base: str, dims: dict, t: dict, bias: bool = False) -> int:
    """Instructions codegen emits for a MAC nest with tiles t: per step (output tile x
    reduction tile) two operand loads and a MAC; per output tile RQ and a store (and the
    bias broadcast of an FP nest); SYNCs that pass tokens at nest boundaries come on top."""
    red = {"conv": ("ci",), "conv_eb": ("co",), "conv_wg": ("n", "oh")}[base]
    out_tiles = steps = 1
    for d in dims:
        k = _ceil(dims[d], t[d])
        steps *= k
        if d not in red:
            out_tiles *= k
    return 3 * steps + (3 if bias else 2) * out_tiles


def search(base: str, G: dict, dims: dict, unit: dict, tg: Target, bias: bool,
           mode: str, start: dict, where: str, copies: int = 2) -> dict:
    """Tile sizes for one MAC nest; `start` is a tile that fits `copies` times (the
    shrink heuristic; 2 = double buffering, 1 when not even the smallest tile fits
    twice)."""
    lad = {d: ladder(dims[d], unit.get(d, 1)) for d in dims}
    fits = lambda t: mac_tile_ok(base, G, t, tg, copies)                      # noqa: E731
    cost = lambda t: nest_cost(base, G, dims, t, tg, bias)               # noqa: E731
    size = lambda t: nest_instructions(base, dims, t, bias)              # noqa: E731
    if mode == "exhaustive":
        scored = []
        for combo in itertools.product(*(lad[d] for d in dims)):
            t = dict(zip(dims, combo))
            if fits(t):
                scored.append((cost(t), t))
        if not scored:
            raise EdgecError(f"{where}: even the smallest tile does not fit the target's "
                             "buffers; use a target with larger buffers")
        bound = min(c for c, _ in scored) * (1 + TOLERANCE)
        return min(((size(t), c, i), t) for i, (c, t) in enumerate(scored)
                   if c <= bound)[1]
    if mode != "greedy":
        raise EdgecError(f"--search {mode!r}: choose one of {', '.join(MODES)}")
    t, c = dict(start), cost(start)
    while True:                      # fastest: best cost-lowering move
        best = None
        for u in _neighbours(t, lad, unit, fits, base, where):
            cu = cost(u)
            if cu < c and (best is None or cu < best[0]):
                best = (cu, u)
        if best is None:
            break
        c, t = best
    bound, key = c * (1 + TOLERANCE), (size(t), c)
    while True:                      # then smaller: instruction-cutting moves within bound
        best = None
        for u in _neighbours(t, lad, unit, fits, base, where):
            ku = (size(u), cost(u))
            if ku[1] <= bound and ku < key and (best is None or ku < best[0]):
                best = (ku, u)
        if best is None:
            return t
        key, t = best


def _neighbours(t: dict, lad: dict, unit: dict, fits, base: str, where: str):
    """Tiles one greedy move away: one dim one or two ladder steps smaller; or one dim one
    or two steps larger with the others re-shrunk to fit (each other dim tried first,
    then the default priority), so a move can trade, e.g., batch for channels."""
    for d in t:
        i = lad[d].index(t[d])
        for j in (i + 1, i + 2):
            if j < len(lad[d]):
                u = dict(t, **{d: lad[d][j]})
                if fits(u):
                    yield u
        for j in (i - 1, i - 2):
            if j < 0:
                continue
            grown = dict(t, **{d: lad[d][j]})
            if fits(grown):
                yield grown
                continue
            rest = [e for e in _flat(PRIORITY[base]) if e != d]
            for first in [None] + rest:
                order = ([first] if first else []) + [e for e in rest if e != first]
                keep = dict(unit, **{d: grown[d]})      # d may not shrink back
                try:
                    yield shrink(grown, keep, fits, order, where)
                except EdgecError:
                    pass


def _flat(priority) -> list[str]:
    return [d for p in priority for d in (p if isinstance(p, tuple) else (p,))]
