"""Execute one translation block (translate.py) as whole-array operations.

`execute(m, block)` computes every value of the block's dataflow graph level by level
(loads first: no load of a block reads what the block stores), through the emulator's
own kernels: mac.product for MAC chains, vector.rq_round / rng.rand32_rows / sgd_step /
sgd_master and the handlers' own parameter checks (_rq_dyn_shift, _op_clamp,
_sgd_shifts) for RQ and SGD, grouped by their parameters and run on the concatenated
tiles.  Only then does it commit: the stores in program order, the buffer contents at
block exit, the statistics pairs in program order (x_stats), the access log and the
counters.  Any check that fails before the commit (a bound that cannot exclude int32
overflow, a shift or clamp from the exponent table out of range) raises Refuse: the
machine is untouched and the caller interprets the block.
"""
from __future__ import annotations

import numpy as np

from edgec.isa.table import BUFFERS, ROUND_MODES

from .dma import gather_addr, store_bytes
from .mac import _PRODUCT, _key, _plan, product
from .numerics import INT32_MAX, clamp
from .rng import rand32_rows
from .state import Trap, x_stats
from .translate import _GATHER_KEY, Dyn, _Extents
from .vector import (_op_clamp, _rq_dyn_shift, _sgd_shifts, _shift, _tile_hash, rq_round,
                     sgd_master, sgd_step)

_NATIVE = {b: np.dtype(d) for b, d in (("IBUF", "int8"), ("WBUF", "int8"),
                                       ("ABUF", "int32"), ("XBUF", "int32"))}
# the summed axis of each pattern: (field, axis of the A tile, axis of the B tile)
_FOLD = {"FP": ("ci", 1, 1), "EB": ("co", 1, 0), "WG": ("n", 0, 0)}
_KEY_POS = {"n": 1, "ci": 2, "co": 3}
CHUNK = 1 << 15               # elements per batch of RQ / SGD tiles


class Refuse(Exception):
    """A run-time check failed: interpret the block instead."""


def _fold_plan(members) -> tuple[list, int]:
    """([(fields, key, plan, member indices, A shapes, B shapes, A axis, B axis)], terms):
    members with the same geometry but the summed axis, concatenated along it."""
    groups: dict = {}
    terms = 0
    for i, (f, _, _) in enumerate(members):
        key = _key(f)
        p = _plan(key)
        terms += p.terms
        field = _FOLD[p.pat][0]
        if p.pat != "WG" and (f["g"] != 1 or p.pointwise):
            k = ("alone", i)
        else:
            k = key[:_KEY_POS[field]] + (None,) + key[_KEY_POS[field] + 1:]
        groups.setdefault(k, []).append(i)
    out = []
    for idx in groups.values():
        f0 = members[idx[0]][0]
        p0 = _plan(_key(f0))
        field, ax_a, ax_b = _FOLD[p0.pat]
        ff = dict(f0, acc=0)
        ff[field] = sum(members[i][0][field] for i in idx)
        fk = _key(ff)
        plans = [_plan(_key(members[i][0])) for i in idx]
        out.append((ff, fk, _plan(fk), idx, [q.a_shape for q in plans],
                    [q.b_shape for q in plans], ax_a, ax_b))
    return out, terms


def _cat(arrs, vals, shapes, axis):
    if len(vals) == 1:
        return arrs[vals[0].idx]
    return np.concatenate([arrs[v.idx].reshape(s) for v, s in zip(vals, shapes)],
                          axis=axis).reshape(-1)


def _chain_terms(m, ops, arrs) -> list:
    """Per chain: (its fold groups, C0 or None), after the bound check (Refuse unless
    max|C0| + terms * 2**14 <= 2**31 - 1: no partial sum of the chain leaves int32, so
    the exact products and their sums are formed in int32)."""
    out = []
    for op in ops:
        init, members = op.info
        if op.plan is None:
            op.plan = _fold_plan(members)
        groups, terms = op.plan
        bound = terms * _PRODUCT
        c0 = None
        if init is not None:
            c0 = arrs[init.idx]
            bound += max(int(c0.max()), -int(c0.min()))
        if bound > INT32_MAX:
            raise Refuse("MAC chain bound")
        out.append((groups, c0))
    return out


# grids: (A axis, its field, B axis, its field) along which products of one geometry
# stack, the other operand's tiles shared; C is then [nA, X, nB, rest]
_GRID = {"FP": (0, "n", 0, "co"), "EB": (0, "n", 1, "ci"), "WG": (1, "co", 1, "ci")}


def _operands(op, group, arrs):
    """A chain's (A, B) of one fold group, concatenated along the summed axis."""
    ff, fk, fp, idx, a_sh, b_sh, ax_a, ax_b = group
    members = op.info[1]
    return (_cat(arrs, [members[i][1] for i in idx], a_sh, ax_a),
            _cat(arrs, [members[i][2] for i in idx], b_sh, ax_b))


def _grid(ops, items, arrs, partial) -> bool:
    """Products of one geometry (G = 1) that pair every one of nA A operands with every
    one of nB B operands exactly once: one product over the A tiles stacked along
    _GRID's A axis and the B tiles along its B axis, each chain's part cut out of it.
    False (nothing done) when they do not form such a grid."""
    ff, fk, fp = items[0][1][:3]
    if ff["g"] != 1:
        return False
    ids = [tuple(tuple(id(ops[k].info[1][i][j]) for i in g[3]) for j in (1, 2))
           for k, g in items]
    a_ids = list(dict.fromkeys(a for a, _ in ids))
    b_ids = list(dict.fromkeys(b for _, b in ids))
    nA, nB = len(a_ids), len(b_ids)
    if nA * nB != len(items) or len(set(ids)) != len(items):
        return False
    first_a = {a: it for it, (a, _) in zip(items, ids)}
    first_b = {b: it for it, (_, b) in zip(items, ids)}
    ax_a, f_a, ax_b, f_b = _GRID[fp.pat]
    A = np.concatenate([_operands(ops[k], g, arrs)[0].reshape(fp.a_shape)
                        for k, g in (first_a[a] for a in a_ids)], axis=ax_a)
    B = np.concatenate([_operands(ops[k], g, arrs)[1].reshape(fp.b_shape)
                        for k, g in (first_b[b] for b in b_ids)], axis=ax_b)
    gf = dict(ff)
    gf[f_a] = ff[f_a] * nA
    gf[f_b] = ff[f_b] * nB
    gk = _key(gf)
    res = product(gf, gk, _plan(gk), A.reshape(-1), B.reshape(-1))
    res = res.reshape(nA, ff[f_a], nB, -1)
    ai = {a: j for j, a in enumerate(a_ids)}
    bi = {b: j for j, b in enumerate(b_ids)}
    for (k, _), (a, b) in zip(items, ids):
        part = res[ai[a], :, bi[b]].astype(np.int32).reshape(-1)
        partial[k] = part if partial[k] is None else partial[k] + part
    return True


def _stacked(ops, run, arrs, partial) -> None:
    """Products of one geometry and the same B tiles (one alone, or FP/EB with their A
    tiles stacked along the images: C images-first, each one's part contiguous)."""
    ff, fk, fp = run[0][1][:3]
    As = []
    for k, g in run:
        A, B = _operands(ops[k], g, arrs)
        As.append(A)
    if len(run) > 1:
        ff = dict(ff, n=ff["n"] * len(run))
        fk = _key(ff)
        fp = _plan(fk)
    res = product(ff, fk, fp, np.concatenate(As) if len(As) > 1 else As[0], B)
    c_n = res.size // len(run)
    for j, (k, _) in enumerate(run):
        part = res[j * c_n:(j + 1) * c_n].astype(np.int32)
        partial[k] = part if partial[k] is None else partial[k] + part


def _mac(m, ops, arrs, stats) -> None:
    """Every chain's C: its fold groups' products, those of one geometry across the
    level's chains as one product (`_grid`) where they form a grid, else each alone."""
    chains = _chain_terms(m, ops, arrs)
    buckets: dict = {}
    for k, (groups, _) in enumerate(chains):
        for g in groups:
            buckets.setdefault(g[1], []).append((k, g))
    partial: list = [None] * len(ops)
    for items in buckets.values():
        if len(items) > 1 and _grid(ops, items, arrs, partial):
            continue
        if items[0][1][2].pat == "WG":
            runs = [[it] for it in items]
        else:                            # FP, EB: A and C images-first, B shared
            by_b: dict = {}
            for k, g in items:
                by_b.setdefault(tuple(id(ops[k].info[1][i][2]) for i in g[3]), []).append(
                    (k, g))
            runs = list(by_b.values())
        for run in runs:
            _stacked(ops, run, arrs, partial)
    for op, (_, c0), total in zip(ops, chains, partial):
        if c0 is not None:
            total += c0
        arrs[op.outs[0].idx] = total


def _chunks(groups: dict):
    """(parameters, ops) runs of each group of at most about CHUNK elements: elementwise
    work on concatenated tiles stays in cache."""
    for key, ops in groups.items():
        run, size = [], 0
        for op in ops:
            run.append(op)
            size += op.outs[0].n
            if size >= CHUNK:
                yield key, run
                run, size = [], 0
        if run:
            yield key, run


def _split(ops, sizes):
    offs = np.cumsum([0] + sizes)
    return [(op, int(offs[i]), int(offs[i + 1])) for i, op in enumerate(ops)]


def _rq(m, ops, arrs, stats) -> None:
    groups: dict = {}
    for op in ops:
        f = op.info[0]
        try:
            s = _rq_dyn_shift(m, f) if f["dyn"] else _shift(f)
            lo, hi = _op_clamp(m, f, "RQ")
        except Trap:
            raise Refuse("RQ parameters") from None
        groups.setdefault((s, ROUND_MODES[f["mode"]], lo, hi), []).append(op)
    for (s, mode, lo, hi), g in _chunks(groups):
        v = np.concatenate([arrs[op.info[1].idx] for op in g]) if len(g) > 1 \
            else arrs[g[0].info[1].idx]
        r = _rq_random(m, g) if s > 0 and mode == "stochastic" else None
        q = rq_round(v, s, mode, r)
        res = clamp(q, lo, hi)
        spans = _split(g, [op.outs[0].n for op in g])
        cast = {}
        for op, a, b in spans:
            dt = _NATIVE[BUFFERS[op.info[0]["dbuf"]]]
            if dt not in cast:
                cast[dt] = res.astype(dt)
            arrs[op.outs[0].idx] = cast[dt][a:b]
        if any(op.info[0]["st"] for op in g):
            _rq_stats(spans, q, res, lo, hi, stats)


def _rq_random(m, g) -> np.ndarray:
    """The random words of a batch of stochastic RQ words, concatenated: rand32_rows
    over each run of equal tile shapes and index strides (vector._tile_hash)."""
    parts, run, shape = [], [], None
    for op in g + [None]:
        f = None if op is None else op.info[0]
        sh = None if f is None else (tuple(f[k] for k in ("n0", "n1", "n2", "n3")),
                                     tuple(f[k] for k in ("g0", "g1", "g2", "g3")))
        if run and sh != shape:
            fs = [o.info[0] for o in run]
            parts.append(rand32_rows(m.seed, [x["tid"] for x in fs], [x["gbase"] for x in fs],
                                     _tile_hash(*shape)).reshape(-1))
            run = []
        run.append(op)
        shape = sh
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _rq_stats(spans, q, res, lo: int, hi: int, stats: dict) -> None:
    """int8_counts of every st=1 word of a batch, by segment reductions."""
    sat = np.zeros(q.shape, dtype=np.int32)
    if hi == 127:
        sat += q > 127
    if lo == -127:
        sat += q < -127
    starts = [a for _, a, _ in spans]
    n = np.add.reduceat(sat, starts)
    mx = np.maximum.reduceat(np.abs(res), starts)
    for k, (op, _a, _b) in enumerate(spans):
        if op.info[0]["st"]:
            stats[id(op)] = (int(n[k]), int(mx[k]))


def _sgd(m, ops, arrs, stats) -> None:
    groups: dict = {}
    for op in ops:
        f = op.info[0]
        if not 1 <= f["cbits"] <= 32:
            raise Refuse("SGD cbits")
        try:
            lr, cs, bound = _sgd_shifts(m, f)
        except Trap:
            raise Refuse("SGD parameters") from None
        groups.setdefault((f["lrmul"], lr, cs, bound, f["cbits"], f["dyn"], f["ng"]),
                          []).append(op)
    for (lrmul, lr, cs, bound, cbits, dyn, ng), g in _chunks(groups):
        Mv = np.concatenate([arrs[op.info[1].idx] for op in g]).astype(np.int64)
        step = None
        if not ng:
            step = sgd_step(np.concatenate([arrs[op.info[2].idx] for op in g]), lrmul, lr)
        Mn, r, C = sgd_master(Mv, step, bound, cs, cbits, dyn)
        hi = (1 << (cbits - 1)) - 1
        for op, a, b in _split(g, [op.outs[0].n for op in g]):
            f = op.info[0]
            copy, master = op.outs
            arrs[copy.idx] = C[a:b].astype(_NATIVE[BUFFERS[f["dbuf"]]])
            arrs[master.idx] = Mn[a:b].astype(np.int32)
            if f["st"]:
                stats[id(op)] = (int(np.count_nonzero(np.abs(r[a:b]) > hi)),
                                 int(np.abs(C[a:b]).max()))


def _ld(m, ops, arrs, stats) -> None:
    ddr = m.ddr
    for op in ops:
        a, shape, strides, dt = op.info
        arrs[op.outs[0].idx] = np.array(np.ndarray(shape, dt, ddr, a, strides)).reshape(-1)


def _live(m, ops, arrs, stats) -> None:
    for op in ops:
        buf, a = op.info
        v = op.outs[0]
        arrs[v.idx] = m.bufs[buf][a:a + v.n].copy()


_ADDR: dict = {}              # (fields, index tables' bytes) -> element addresses
_ADDR_MAX = 1 << 14


def _gather(m, f) -> np.ndarray:
    """gather_addr(m, f), cached on the word's fields and its tables' current bytes
    (Refuse where the tables make the word fault)."""
    key = (m.ddr.size, tuple(f[k] for k in _GATHER_KEY)) + tuple(
        m.ddr[f[f"tab{d}"]:f[f"tab{d}"] + 4 * f[f"n{d}"]].tobytes()
        for d in (0, 1) if f["gather"] >> d & 1)
    addr = _ADDR.get(key)
    if addr is None:
        addr = gather_addr(m, f)
        if addr is None:
            raise Refuse("index tables")
        if len(_ADDR) >= _ADDR_MAX:
            _ADDR.clear()
        addr.flags.writeable = False
        _ADDR[key] = addr
    return addr


def _ldch(m, ops, arrs, stats) -> None:
    """Gathered loads: element addresses from the index tables now (gather_addr; the
    block proved no earlier store of it wrote the tables, `_dma_order` checks the data)."""
    ddr = m.ddr
    for op in ops:
        f, dt = op.info
        addr = _gather(m, f)
        idx = addr[:, None] + np.arange(f["esize"], dtype=np.int64)
        arrs[op.outs[0].idx] = np.ascontiguousarray(ddr[idx]).view(dt).reshape(-1)
        stats[id(op)] = idx


KERNELS = {"ld": _ld, "live": _live, "mac": _mac, "rq": _rq, "sgd": _sgd, "ldch": _ldch}


def _gathered_stores(m, blk, stats) -> dict:
    """k -> (DDR bytes, their values) of every STCH store, as `dma._store` resolves
    them (repeated bytes: the last element in row-major order wins)."""
    out = {}
    for k, (_pc, a, f, _, dt, v) in enumerate(blk.stores):
        if a is not None:
            continue
        out[k] = (_gather(m, f), dt, v)
    return out


def _dma_order(blk, stats, gathered) -> None:
    """Refuse unless no DMA read of the block overlaps the bytes an earlier store wrote
    (the extents of gathered words known now)."""
    written = _Extents()
    for write, lo, hi, ref in blk.events:
        if ref is not None:
            if write:
                addr = gathered[ref][0]
                esize = gathered[ref][1].itemsize
            else:
                addr = stats[id(ref)][:, 0]
                esize = ref.info[1].itemsize
            lo, hi = int(addr.min()), int(addr.max()) + esize
        if write:
            written.add(lo, hi)
        elif written.overlaps(lo, hi):
            raise Refuse("DMA read after a store of the block")


def execute(m, blk) -> bool:
    """Run the block on `m`; False (m untouched) when a run-time check refuses it."""
    arrs: list = [None] * blk.nvals
    stats: dict = {}
    try:
        for level in blk.levels:
            for kind, ops in level:
                KERNELS[kind](m, ops, arrs, stats)
        gathered = {}
        if blk.dynamic:
            gathered = _gathered_stores(m, blk, stats)
            _dma_order(blk, stats, gathered)
    except Refuse:
        return False
    ddr = m.ddr
    written = {}
    for k, (pc, a, shape, strides, dt, v) in enumerate(blk.stores):
        if a is None:
            written[k] = store_bytes(m, gathered[k][0], dt, arrs[v.idx])
        else:
            np.ndarray(shape, dt, ddr, a, strides)[...] = arrs[v.idx].reshape(shape)
    bufs = m.bufs
    for buf, lo, hi, v, off in blk.segs:
        bufs[buf][lo:hi] = arrs[v.idx][off:off + hi - lo]
    for op, _xs in blk.stats:
        x_stats(m, op.info[0], *stats[id(op)])
    if blk.dynamic:
        m.log.extend([(stats[id(e.ref)].reshape(-1),) if isinstance(e, Dyn) else e
                      for e in blk.log_r],
                     [(blk.stores[e.ref][0], written[e.ref]) if isinstance(e, Dyn) else e
                      for e in blk.log_w])
    else:
        m.log.extend(blk.log_r, blk.log_w)
    c = m.counters
    c["macs"] += blk.macs
    c["ddr_read_bytes"] += blk.rbytes
    c["ddr_write_bytes"] += blk.wbytes
    return True
