"""Vector-unit instructions: RQ, VMASK, VADD, MAXP, MAXPB, RSUM, VMULC, LOSSG, SGD (and END).

Dynamic fixed point (docs/numerics.md section 8): with dyn=1, RQ, VADD and SGD take their
shifts from exponents in XBUF and LOSSG its exp table from X[xz]; with st=1, RQ, VADD and
SGD add their saturation count and largest |result| into the XBUF pair at xs.  With
dyn=0, st=0 (and SGD ng=0) every instruction runs exactly the code it always did.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from edgec.isa.table import ROUND_MODES

from .numerics import INT32_MAX, clamp, rshift, rshift32, sat, sat8
from .rng import index_hash, rand32_at
from .state import (INT8_BUFS, Trap, buf_name, check_range, lut_addr, nonzero, read_buf,
                    write_buf, x_check, x_get, x_stats)


def op_end(m, f):
    m.halted = True


def op_sync(m, f):
    """SYNC: no data effect; it exists to pass tokens between queues."""


def _clamp_bounds(f, mnemonic):
    lo, hi = f["lo"], f["hi"]
    if not -127 <= lo <= hi <= 127:
        raise Trap(f"{mnemonic} clamp fields lo={lo}, hi={hi}: need "
                   f"-127 <= lo <= hi <= 127")
    return lo, hi


def _dyn_bounds(m, f, mnemonic) -> tuple[int, int]:
    """dcl=1: the real clamp bounds (clo, chi at exponent ce) in integer units of the
    exponent X[xo]: rshift(c, X[xo] - ce, nearest), not yet limited to int8."""
    k = _in_range(x_get(m, f, "xo") - f["ce"], 0, 31, f"{mnemonic} dcl X[xo] - ce")
    if k == 0:
        return f["clo"], f["chi"]
    half = 1 << (k - 1)
    return (f["clo"] + half) >> k, (f["chi"] + half) >> k


def _op_clamp(m, f, mnemonic) -> tuple[int, int]:
    """RQ/VADD (lo, hi): the fields, or with dcl=1 the bounds at X[xo] limited to +-127."""
    if not f["dcl"]:
        return _clamp_bounds(f, mnemonic)
    bl, bh = _dyn_bounds(m, f, mnemonic)
    return _clamp_bounds({"lo": max(bl, -127), "hi": min(bh, 127)}, f"{mnemonic} dcl")


def _shift(f):
    s = f["shift"]
    if not -31 <= s <= 31:
        raise Trap(f"field shift={s} outside [-31, 31]")
    return s


def _in_range(value: int, lo: int, hi: int, what: str) -> int:
    if not lo <= value <= hi:
        raise Trap(f"{what} = {value} outside [{lo}, {hi}]")
    return value


def _rq_dyn_shift(m, f) -> int:
    """RQ dyn=1: shift = X[xo] - X[xa] - X[xb]."""
    eo, ea, eb = (x_get(m, f, k) for k in ("xo", "xa", "xb"))
    return _in_range(eo - ea - eb, -31, 31,
                     f"RQ dyn shift X[xo] - X[xa] - X[xb] = {eo} - {ea} - {eb}")


def _vadd_dyn_shifts(m, f) -> tuple[int, int, int]:
    """VADD dyn=1: (sa, sb, shift) from m = min(X[xa], X[xb]) (nb=0: m = X[xa], sb = 0,
    X[xb] not read: B is absent)."""
    ea = x_get(m, f, "xa")
    eb = x_get(m, f, "xb") if f["nb"] else ea
    eo = x_get(m, f, "xo")
    lo = min(ea, eb)
    sa = _in_range(ea - lo, 0, 31, f"VADD dyn sa = X[xa] - m = {ea} - {lo}")
    sb = _in_range(eb - lo, 0, 31, f"VADD dyn sb = X[xb] - m = {eb} - {lo}")
    return sa, sb, _in_range(eo - lo, -31, 31, f"VADD dyn shift = X[xo] - m = {eo} - {lo}")


def _int8_stats(m, f, r, q, lo: int, hi: int) -> None:
    """st=1 of RQ/VADD: saturations of the rounded values r (r > 127 while hi = 127, r <
    -127 while lo = -127; other clamps are not saturations), largest |q| stored."""
    x_stats(m, f, *int8_counts(r, q, lo, hi))


def int8_counts(r, q, lo: int, hi: int) -> tuple[int, int]:
    """(saturations, largest |q|) of `_int8_stats`."""
    n = 0
    if hi == 127:
        n += int(np.count_nonzero(r > 127))
    if lo == -127:
        n += int(np.count_nonzero(r < -127))
    return n, int(np.abs(q).max())


@lru_cache(maxsize=1024)
def _tile_hash(n: tuple, g: tuple) -> np.ndarray:
    """index_hash of i0*g0 + i1*g1 + i2*g2 + i3*g3 over the tile [n0, n1, n2, n3], flat."""
    idx = (np.arange(n[0], dtype=np.int64)[:, None, None, None] * g[0]
           + np.arange(n[1], dtype=np.int64)[None, :, None, None] * g[1]
           + np.arange(n[2], dtype=np.int64)[None, None, :, None] * g[2]
           + np.arange(n[3], dtype=np.int64)[None, None, None, :] * g[3]).reshape(-1)
    h = index_hash(idx)
    h.flags.writeable = False
    return h


def rq_random(m, f) -> np.ndarray:
    """The uint32 random words of a stochastic RQ word's tile (flat)."""
    return rand32_at(m.seed, f["tid"], f["gbase"],
                     _tile_hash((f["n0"], f["n1"], f["n2"], f["n3"]),
                                (f["g0"], f["g1"], f["g2"], f["g3"])))


def rq_round(v: np.ndarray, s: int, mode: str, r) -> np.ndarray:
    """RQ's rounding of the int32 source v: rshift(v, s, mode, r) (r: the random words
    of a stochastic RQ with s > 0, else None)."""
    if s > 0:
        return rshift32(v, s, r)
    return rshift(v.astype(np.int64), s, mode)


def op_rq(m, f):
    nonzero(f, "n0", "n1", "n2", "n3")
    n0, n1, n2, n3 = f["n0"], f["n1"], f["n2"], f["n3"]
    count = n0 * n1 * n2 * n3
    dbuf = buf_name(f["dbuf"], "dbuf")
    s = _rq_dyn_shift(m, f) if f["dyn"] else _shift(f)
    lo, hi = _op_clamp(m, f, "RQ")
    mode = ROUND_MODES[f["mode"]]
    if f["st"]:
        x_check(f["xs"], 2, "xs")
    check_range(m, dbuf, f["daddr"], count, f"RQ result tile [{n0},{n1},{n2},{n3}] at daddr")
    v = read_buf(m, "ABUF", f["saddr"], count, f"RQ source tile [{n0},{n1},{n2},{n3}] at saddr")
    r = rq_random(m, f) if s > 0 and mode == "stochastic" else None
    q = rq_round(v, s, mode, r)
    # -127 <= lo <= hi <= 127: clamping to [lo, hi] includes sat8, and the result fits
    res = clamp(q, lo, hi)
    write_buf(m, dbuf, f["daddr"], res, "RQ result", fits=True)
    if f["st"]:
        _int8_stats(m, f, q, res, lo, hi)


def op_vmask(m, f):
    c = f["count"]
    a, b, d = (buf_name(f[k], k) for k in ("abuf", "bbuf", "dbuf"))
    check_range(m, d, f["daddr"], c, "VMASK result at daddr")
    A = read_buf(m, a, f["aaddr"], c, "VMASK operand A at aaddr").astype(np.int64)
    B = read_buf(m, b, f["baddr"], c, "VMASK operand B at baddr").astype(np.int64)
    lo, hi = f["lo"], f["hi"]
    if f["dcl"]:        # a bound beyond int8: the saturated +-127 still passes
        bl, bh = _dyn_bounds(m, f, "VMASK")
        lo, hi = (bl if bl >= -127 else -128), (bh if bh <= 127 else 128)
    keep = (B > lo) & (B < hi)
    write_buf(m, d, f["daddr"], np.where(keep, A, 0), "VMASK result")


def op_vadd(m, f):
    c = f["count"]
    names = ("abuf", "bbuf", "dbuf") if f["nb"] else ("abuf", "dbuf")
    bufs = {}
    for k in names:
        b = buf_name(f[k], k)
        if b not in INT8_BUFS:
            raise Trap(f"field {k}={b}: VADD operands and result must be int8 (IBUF or WBUF)")
        bufs[k] = b
    if f["dyn"]:
        sa, sb, s = _vadd_dyn_shifts(m, f)
    else:
        sa, sb, s = f["sa"], f["sb"], _shift(f)
    lo, hi = _op_clamp(m, f, "VADD")
    mode = ROUND_MODES[f["mode"]]
    if f["st"]:
        x_check(f["xs"], 2, "xs")
    check_range(m, bufs["dbuf"], f["daddr"], c, "VADD result at daddr")
    v = read_buf(m, bufs["abuf"], f["aaddr"], c, "VADD operand A at aaddr").astype(np.int64)
    v = v << np.int64(sa)                               # |v| <= 2**38: no int64 overflow
    if f["nb"]:
        B = read_buf(m, bufs["bbuf"], f["baddr"], c, "VADD operand B at baddr")
        v = v + (B.astype(np.int64) << np.int64(sb))
    if s < 0:
        # v * 2**-s may leave int64; any |v| >= 128 saturates to the same +-127 anyway
        v = clamp(v, -128, 128)
    r = None
    if mode == "stochastic" and s > 0:
        r = rand32_at(m.seed, f["tid"], f["gbase"], _tile_hash((c, 1, 1, 1), (1, 0, 0, 0)))
    rounded = rshift(v, s, mode, r)     # s < 0: the clamp to +-128 keeps r's saturations
    q = clamp(rounded, lo, hi)                          # includes sat8: see op_rq
    write_buf(m, bufs["dbuf"], f["daddr"], q, "VADD result", fits=True)
    if f["st"]:
        _int8_stats(m, f, rounded, q, lo, hi)


def _pool_geom(m, f, mnemonic):
    nonzero(f, "planes", "h", "w", "kh", "kw", "sh", "sw")
    P, h, w = f["planes"], f["h"], f["w"]
    kh, kw, sh, sw, ph, pw = f["kh"], f["kw"], f["sh"], f["sw"], f["ph"], f["pw"]
    if h + 2 * ph < kh or w + 2 * pw < kw:
        raise Trap(f"{mnemonic}: kernel {kh}x{kw} larger than the padded plane "
                   f"{h + 2 * ph}x{w + 2 * pw}")
    oh = (h + 2 * ph - kh) // sh + 1
    ow = (w + 2 * pw - kw) // sw + 1
    return P, h, w, kh, kw, sh, sw, ph, pw, oh, ow


def _span(n_o: int, s: int, p: int, k: int, n_i: int):
    """Output indices whose input position o*s - p + k is inside [0, n_i), as slices."""
    base = k - p
    lo = 0 if base >= 0 else (-base + s - 1) // s
    hi_in = n_i - 1 - base
    if hi_in < 0:
        return None
    hi = min(n_o - 1, hi_in // s)
    if lo > hi:
        return None
    return slice(lo, hi + 1), slice(base + lo * s, base + hi * s + 1, s)


def _window_max(X, P, oh, ow, kh, kw, sh, sw, ph, pw, mnemonic):
    NEG = np.iinfo(np.int64).min
    M = np.full((P, oh, ow), NEG, dtype=np.int64)
    rows = [_span(oh, sh, ph, i, X.shape[1]) for i in range(kh)]
    cols = [_span(ow, sw, pw, j, X.shape[2]) for j in range(kw)]
    for i in range(kh):
        if rows[i] is None:
            continue
        for j in range(kw):
            if cols[j] is None:
                continue
            (ro, ri), (co, cj) = rows[i], cols[j]
            np.maximum(M[:, ro, co], X[:, ri, cj], out=M[:, ro, co])
    if (M == NEG).any():
        raise Trap(f"{mnemonic}: a pooling window lies entirely in the padding "
                   f"(kernel {kh}x{kw}, padding {ph},{pw})")
    return M, rows, cols


def op_maxp(m, f):
    P, h, w, kh, kw, sh, sw, ph, pw, oh, ow = _pool_geom(m, f, "MAXP")
    s, d = buf_name(f["sbuf"], "sbuf"), buf_name(f["dbuf"], "dbuf")
    check_range(m, d, f["daddr"], P * oh * ow, f"MAXP output [{P},{oh},{ow}] at daddr")
    X = read_buf(m, s, f["saddr"], P * h * w, f"MAXP input [{P},{h},{w}] at saddr")
    X = X.astype(np.int64).reshape(P, h, w)
    M, _, _ = _window_max(X, P, oh, ow, kh, kw, sh, sw, ph, pw, "MAXP")
    write_buf(m, d, f["daddr"], M, "MAXP output")


def op_maxpb(m, f):
    P, h, w, kh, kw, sh, sw, ph, pw, oh, ow = _pool_geom(m, f, "MAXPB")
    xb, gb, db = (buf_name(f[k], k) for k in ("xbuf", "gbuf", "dbuf"))
    check_range(m, db, f["daddr"], P * h * w, f"MAXPB dX [{P},{h},{w}] at daddr")
    X = read_buf(m, xb, f["xaddr"], P * h * w, f"MAXPB X [{P},{h},{w}] at xaddr")
    G = read_buf(m, gb, f["gaddr"], P * oh * ow, f"MAXPB dY [{P},{oh},{ow}] at gaddr")
    X = X.astype(np.int64).reshape(P, h, w)
    G = G.astype(np.int64).reshape(P, oh, ow)
    M, rows, cols = _window_max(X, P, oh, ow, kh, kw, sh, sw, ph, pw, "MAXPB")
    found = np.zeros((P, oh, ow), dtype=bool)
    dX = np.zeros((P, h, w), dtype=np.int64)
    for i in range(kh):                      # row-major over (kh, kw): first max wins
        if rows[i] is None:
            continue
        for j in range(kw):
            if cols[j] is None:
                continue
            (ro, ri), (co, cj) = rows[i], cols[j]
            hit = (X[:, ri, cj] == M[:, ro, co]) & ~found[:, ro, co]
            # within one tap distinct windows hit distinct input positions: plain +=
            dX[:, ri, cj] += np.where(hit, G[:, ro, co], 0)
            found[:, ro, co] |= hit
    write_buf(m, db, f["daddr"], sat8(dX), "MAXPB dX")


def op_rsum(m, f):
    channel_sums(m, f, "RSUM", squares=False)


def channel_sums(m, f, mnemonic: str, squares: bool):
    """RSUM (and CSTAT, squares=True): D[c] (+)= sum over n, hw of S[n, c, hw], and with
    squares D[c + C] (+)= the sum of S^2; traps if any D leaves int32."""
    nonzero(f, "n", "c", "hw")
    n, c, hw = f["n"], f["c"], f["hw"]
    rows = 2 if squares else 1
    s = buf_name(f["sbuf"], "sbuf")
    if squares and s not in INT8_BUFS:
        raise Trap(f"field sbuf: {mnemonic} reads an int8 tile (IBUF or WBUF), not {s}")
    shape = f"[2,{c}]" if squares else f"[{c}]"
    check_range(m, "ABUF", f["daddr"], rows * c, f"{mnemonic} result {shape} at daddr")
    S = read_buf(m, s, f["saddr"], n * c * hw, f"{mnemonic} input [{n},{c},{hw}] at saddr")
    S = S.astype(np.int64).reshape(n, c, hw)
    tot = S.sum(axis=(0, 2))
    if squares:
        tot = np.concatenate([tot, (S * S).sum(axis=(0, 2))])
    if f["acc"]:
        tot = tot + m.bufs["ABUF"][f["daddr"]:f["daddr"] + rows * c].astype(np.int64)
    bad = np.abs(tot) > INT32_MAX
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        at = f"{k // c}, {k % c}" if squares else f"{k}"
        raise Trap(f"accumulator overflow: D[{at}] = {int(tot[k])} leaves int32 "
                   f"(acc={f['acc']}, ABUF {f['daddr'] + k})")
    m.bufs["ABUF"][f["daddr"]:f["daddr"] + rows * c] = tot


def op_vmulc(m, f):
    """VMULC: mode 0 C[p, i] = A[p, i] * B[p]; mode 1 C[p] = sum_i A[p, i] * B[p, i]."""
    nonzero(f, "planes", "hw")
    p, hw, mode = f["planes"], f["hw"], f["mode"]
    a, b = buf_name(f["abuf"], "abuf"), buf_name(f["bbuf"], "bbuf")
    for k, name in (("abuf", a), ("bbuf", b)):
        if name not in INT8_BUFS:
            raise Trap(f"field {k}: VMULC reads int8 tiles (IBUF or WBUF), not {name}")
    nc = p * hw if mode == 0 else p
    check_range(m, "ABUF", f["caddr"], nc, f"VMULC result [{nc}] at caddr")
    A = read_buf(m, a, f["aaddr"], p * hw, f"VMULC A [{p},{hw}] at aaddr")
    A = A.astype(np.int64).reshape(p, hw)
    B = read_buf(m, b, f["baddr"], p if mode == 0 else p * hw, "VMULC B at baddr")
    if mode == 0:
        C = (A * B.astype(np.int64).reshape(p, 1)).reshape(-1)     # |C| <= 127*127
    else:
        C = (A * B.astype(np.int64).reshape(p, hw)).sum(axis=1)
        bad = np.abs(C) > INT32_MAX
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise Trap(f"accumulator overflow: C[{k}] = {int(C[k])} leaves int32 "
                       f"(ABUF {f['caddr'] + k})")
    m.bufs["ABUF"][f["caddr"]:f["caddr"] + nc] = C


def op_lossg(m, f):
    nonzero(f, "n", "k")
    n, k = f["n"], f["k"]
    zb, db = buf_name(f["zbuf"], "zbuf"), buf_name(f["dbuf"], "dbuf")
    s = f["shift"]
    if s > 31:
        raise Trap(f"field shift={s} outside [0, 31]")
    check_range(m, db, f["daddr"], n * k, f"LOSSG logit error [{n},{k}] at daddr")
    z = read_buf(m, zb, f["zaddr"], n * k, f"LOSSG logits [{n},{k}] at zaddr")
    z = z.astype(np.int64).reshape(n, k)
    lab = read_buf(m, "ABUF", f["laddr"], n, f"LOSSG labels [{n}] at laddr").astype(np.int64)
    lut = read_buf(m, "ABUF", lut_addr(m, f, "LOSSG"), 256, "LOSSG exp table [256] at lutaddr")
    lut = lut.astype(np.int64)
    bad = (lab < 0) | (lab >= k)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise Trap(f"label[{i}] = {int(lab[i])} outside [0, {k}) (ABUF {f['laddr'] + i})")
    d = z.max(axis=1, keepdims=True) - z
    if d.max() > 255:
        raise Trap(f"max - z = {int(d.max())} exceeds the exp table (logits must be int8)")
    E = lut[d]
    S = E.sum(axis=1, keepdims=True)
    if (S <= 0).any():
        i = int(np.flatnonzero(S.reshape(-1) <= 0)[0])
        raise Trap(f"softmax denominator of row {i} is {int(S[i, 0])} (<= 0): bad exp table")
    P = (E << 15) // S
    onehot = (np.arange(k)[None, :] == lab[:, None]).astype(np.int64)
    G = P - (onehot << 15)
    D = sat8(rshift(G * f["rmul"], s, "nearest"))
    write_buf(m, db, f["daddr"], D, "LOSSG logit error")


def _sgd_shifts(m, f) -> tuple[int, int, int]:
    """(lrshift, cshift, bound) of an SGD word: its fields, or with dyn=1 lrshift =
    lrbase - X[xg], cshift = X[xc] + X[xd] - emas, bound = mbound."""
    if f["dyn"]:
        eg, ec, ed = (x_get(m, f, k) for k in ("xg", "xc", "xd"))
        lrshift = _in_range(f["lrbase"] - eg, 0, 31,
                            f"SGD dyn lrshift = lrbase - X[xg] = {f['lrbase']} - {eg}")
        cshift = _in_range(ec + ed - f["emas"], -31, 31,
                           f"SGD dyn cshift = X[xc] + X[xd] - emas = {ec} + {ed} - {f['emas']}")
        bound = f["mbound"]
        if bound > INT32_MAX:
            raise Trap(f"field mbound={bound}: the master's bound does not fit int32")
        return lrshift, cshift, bound
    cshift, cbits = f["cshift"], f["cbits"]
    if cshift > 31:
        raise Trap(f"field cshift={cshift} outside [0, 31]")
    lrshift = f["lrshift"]
    if lrshift > 31:
        raise Trap(f"field lrshift={lrshift} outside [0, 31]")
    bound = ((1 << (cbits - 1)) - 1) << cshift
    if bound > INT32_MAX:
        raise Trap(f"clip bound (2**{cbits - 1}-1) << {cshift} = {bound} does not fit int32")
    return lrshift, cshift, bound


def _momentum(m, f, Mv, u):
    """mom=1: V = sat32(round(V*mumul / 2^mushift) + u + round(M*wdmul / 2^wdshift)),
    written back to the momentum tile at vaddr; returns V (the master's step)."""
    c = f["count"]
    for k in ("mushift", "wdshift"):
        if not 0 <= f[k] <= 31:
            raise Trap(f"SGD field {k}={f[k]} outside [0, 31]")
    if f["mumul"] > 1 << 30:      # keeps V*mumul + u + d inside int64
        raise Trap(f"SGD field mumul={f['mumul']} above 2^30")
    check_range(m, "ABUF", f["vaddr"], c, f"SGD momentum [{c}] at vaddr")
    Vv = m.bufs["ABUF"][f["vaddr"]:f["vaddr"] + c].astype(np.int64)
    d = rshift(Mv * np.int64(f["wdmul"]), f["wdshift"], "nearest")
    Vn = clamp(rshift(Vv * np.int64(f["mumul"]), f["mushift"], "nearest") + u + d,
               -INT32_MAX, INT32_MAX)
    m.bufs["ABUF"][f["vaddr"]:f["vaddr"] + c] = Vn
    return Vn


def sgd_step(G, lrmul: int, lrshift: int) -> np.ndarray:
    """SGD's step rshift(G * lrmul, lrshift, nearest) of the gradient G (any int dtype)."""
    return rshift(G.astype(np.int64) * np.int64(lrmul), lrshift, "nearest")


def sgd_master(Mv, step, bound: int, cshift: int, cbits: int, dyn: int):
    """(new master Mn, r = its rounding to the copy's exponent, the copy C) from the
    master Mv (int64) and the step (None: no gradient)."""
    Mn = clamp(Mv if step is None else Mv - step, -bound, bound)
    r = rshift(Mn, cshift, "nearest")
    # static: |Mn| <= bound, a multiple of 2**cshift, so |r| <= 2**(cbits-1) - 1; dyn: the
    # copy saturates.  Either way C fits an int8 buffer when cbits <= 8 and ABUF always;
    # otherwise write_buf checks it first
    return Mn, r, (sat(r, cbits) if dyn else r)


def op_sgd(m, f):
    c = f["count"]
    db = buf_name(f["dbuf"], "dbuf")
    cbits = f["cbits"]
    if not 1 <= cbits <= 32:
        raise Trap(f"field cbits={cbits} outside [1, 32]")
    lrshift, cshift, bound = _sgd_shifts(m, f)
    if f["st"]:
        x_check(f["xs"], 2, "xs")
    check_range(m, "ABUF", f["maddr"], c, f"SGD master [{c}] at maddr")
    check_range(m, db, f["daddr"], c, f"SGD compute copy [{c}] at daddr")
    Mv = m.bufs["ABUF"][f["maddr"]:f["maddr"] + c].astype(np.int64)
    step = None                                   # ng: no gradient, gbuf is not read
    if not f["ng"]:
        gb = buf_name(f["gbuf"], "gbuf")
        G = read_buf(m, gb, f["gaddr"], c, f"SGD gradient [{c}] at gaddr")
        step = sgd_step(G, f["lrmul"], lrshift)
        if f["mom"]:
            step = _momentum(m, f, Mv, step)
    Mn, r, C = sgd_master(Mv, step, bound, cshift, cbits, f["dyn"])
    write_buf(m, db, f["daddr"], C, "SGD compute copy", fits=cbits <= 8 or db == "ABUF")
    m.bufs["ABUF"][f["maddr"]:f["maddr"] + c] = Mn
    if f["st"]:
        hi = (1 << (cbits - 1)) - 1
        x_stats(m, f, int(np.count_nonzero(np.abs(r) > hi)), int(np.abs(C).max()))
