"""Execute one translation block (translate.py) as whole-array operations.

`execute(m, block)` computes every value of the block's dataflow graph level by level
(loads first: no load of a block reads what the block stores), through the emulator's
own kernels: mac.product for MAC chains, vector.rq_round / rq_random / sgd_step /
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

from .mac import _PRODUCT, _key, _plan, product
from .numerics import INT32_MAX, clamp
from .state import Trap, x_stats
from .vector import (_op_clamp, _rq_dyn_shift, _sgd_shifts, _shift, rq_random, rq_round,
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
    max|C0| + terms * 2**14 <= 2**31 - 1: no partial sum of the chain leaves int32)."""
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


def _mac(m, ops, arrs, stats) -> None:
    """Every chain's C.  Chains of one fold group of pattern FP or EB with the same
    geometry and the same B tiles run as one product over their A tiles stacked along
    the image axis (A and C are images-first: each chain's part is contiguous)."""
    chains = _chain_terms(m, ops, arrs)
    stacks: dict = {}
    partial: list = [None] * len(ops)
    for k, (op, (groups, c0)) in enumerate(zip(ops, chains)):
        members = op.info[1]
        if len(groups) == 1 and groups[0][2].pat != "WG":
            g = groups[0]
            sk = (g[1], tuple(id(members[i][2]) for i in g[3]))
            stacks.setdefault(sk, []).append(k)
            continue
        for ff, fk, fp, idx, a_sh, b_sh, ax_a, ax_b in groups:
            A = _cat(arrs, [members[i][1] for i in idx], a_sh, ax_a)
            B = _cat(arrs, [members[i][2] for i in idx], b_sh, ax_b)
            res = product(ff, fk, fp, A, B)
            partial[k] = res.astype(np.int64) if partial[k] is None else partial[k] + res
    for ks in stacks.values():
        g0 = chains[ks[0]][0][0]
        ff, fk, fp, idx, a_sh, b_sh, ax_a, ax_b = g0
        members0 = ops[ks[0]].info[1]
        B = _cat(arrs, [members0[i][2] for i in idx], b_sh, ax_b)
        As = [_cat(arrs, [ops[k].info[1][i][1] for i in chains[k][0][0][3]], a_sh, ax_a)
              for k in ks]
        if len(ks) > 1:
            ff = dict(ff, n=ff["n"] * len(ks))
            fk = _key(ff)
            fp = _plan(fk)
        res = product(ff, fk, fp, np.concatenate(As) if len(As) > 1 else As[0], B)
        c_n = res.size // len(ks)
        for j, k in enumerate(ks):
            partial[k] = res[j * c_n:(j + 1) * c_n].astype(np.int64)
    for k, (op, (groups, c0)) in enumerate(zip(ops, chains)):
        total = partial[k] if c0 is None else partial[k] + c0
        arrs[op.outs[0].idx] = total.astype(np.int32)


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
        r = None
        if s > 0 and mode == "stochastic":
            r = np.concatenate([rq_random(m, op.info[0]) for op in g])
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


KERNELS = {"ld": _ld, "live": _live, "mac": _mac, "rq": _rq, "sgd": _sgd}


def execute(m, blk) -> bool:
    """Run the block on `m`; False (m untouched) when a run-time check refuses it."""
    arrs: list = [None] * blk.nvals
    stats: dict = {}
    try:
        for level in blk.levels:
            for kind, ops in level:
                KERNELS[kind](m, ops, arrs, stats)
    except Refuse:
        return False
    ddr = m.ddr
    for _pc, a, shape, strides, dt, v in blk.stores:
        np.ndarray(shape, dt, ddr, a, strides)[...] = arrs[v.idx].reshape(shape)
    bufs = m.bufs
    for buf, lo, hi, v, off in blk.segs:
        bufs[buf][lo:hi] = arrs[v.idx][off:off + hi - lo]
    for op, _xs in blk.stats:
        x_stats(m, op.info[0], *stats[id(op)])
    m.log.extend(blk.log_r, blk.log_w)
    c = m.counters
    c["macs"] += blk.macs
    c["ddr_read_bytes"] += blk.rbytes
    c["ddr_write_bytes"] += blk.wbytes
    return True
