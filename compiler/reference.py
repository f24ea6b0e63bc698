"""Reference interpreter: the quantized graph executed as whole torch tensors.

This is the compiler-side implementation of docs/numerics.md.  The emulator
(``runtime_emu/``, numpy, tiles of instructions) is a second, independent implementation
of the same text; the two must agree bit for bit.  Nothing here is shared with the
emulator, and nothing here depends on tiling or execution order.

Entry point::

    run_reference(graph, inputs, seed) -> dict[str, torch.Tensor]

``inputs`` holds ``"x"`` (int8 ``[N,C,H,W]`` or ``[N,F]``), ``"labels"`` (int ``[N]``),
every parameter's compute copy (``param.value``, full PyTorch shape) and the master copy
(``"master:<name>"``, full shape) of every trainable parameter (frozen constants such as a
BatchNorm's normalisation have no master and no ``sgd`` node).  The result maps EVERY
value of the graph (inputs, parameters, masters and all node outputs) to an int64 tensor
holding the exact integers, in the value's shape.

Arithmetic: every integer is held in int64.  Convolutions and matrix products run in
float64 (exact: every operand is an integer and every partial sum is checked to be below
2**53 in magnitude) and are converted back to int64.  Every accumulator is checked against
the int32 range ``[-(2**31-1), 2**31-1]``; leaving it raises ``EdgecError`` naming the node
(op, layer, source location).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from edgec.compiler.ir.graph import Graph, Node
from edgec.compiler.passes.dynfmt import (CALM_STEPS, ROWS, exponent_registers, is_dynamic,
                                          master_bound)
from edgec.isa.errors import EdgecError

I32_MAX = 2**31 - 1
_M32 = 0xFFFFFFFF
_F64_EXACT = 2**53
_NEG_INF = -(2**40)          # maxpool padding: below every int8 / int32 value

__all__ = ["run_reference", "rand32", "rshift", "sat", "sat8", "view_index",
           "conv_acc", "conv_eb_acc", "conv_wg_acc", "maxpool", "maxpool_bwd",
           "loss_grad", "sgd_update", "clamp"]


# ----------------------------------------------------------------------------- helpers

def sat(v: torch.Tensor, bits: int) -> torch.Tensor:
    """``sat_b``: clamp to the symmetric range ``[-(2**(b-1)-1), 2**(b-1)-1]``."""
    lim = 2 ** (bits - 1) - 1
    return v.clamp(-lim, lim)


def sat8(v: torch.Tensor) -> torch.Tensor:
    return sat(v, 8)


def _mul32(a: torch.Tensor, c: int) -> torch.Tensor:
    """``(a * c) mod 2**32`` for ``a`` in [0, 2**32) (int64) and a 32-bit constant ``c``,
    without any product exceeding 2**48 (``c`` split into 16-bit halves)."""
    lo, hi = c & 0xFFFF, (c >> 16) & 0xFFFF
    return ((a * lo) + (((a * hi) & 0xFFFF) << 16)) & _M32


def rand32(seed, tid, idx) -> torch.Tensor:
    """Counter-based random word of numerics.md section 3, as int64 in [0, 2**32).

    ``seed``, ``tid`` and ``idx`` are ints or int64 tensors (broadcast together); each is
    taken modulo 2**32 (they are uint32 in the spec)."""
    seed_t = torch.as_tensor(seed, dtype=torch.int64) & _M32
    tid_t = torch.as_tensor(tid, dtype=torch.int64) & _M32
    idx_t = torch.as_tensor(idx, dtype=torch.int64) & _M32
    h = (_mul32(seed_t, 0x9E3779B1) + _mul32(tid_t, 0x85EBCA77)
         + _mul32(idx_t, 0xC2B2AE3D)) & _M32
    h = h ^ (h >> 16)
    h = _mul32(h, 0x7FEB352D)
    h = h ^ (h >> 15)
    h = _mul32(h, 0x846CA68B)
    h = h ^ (h >> 16)
    return h


def rshift(v: torch.Tensor, s: int, mode: str, r: torch.Tensor | None = None) -> torch.Tensor:
    """``rshift(v, s, mode, r)`` of numerics.md section 2 on int64 tensors."""
    s = int(s)
    if not -31 <= s <= 31:
        raise ValueError(f"shift {s} outside [-31, 31]")
    v = v.to(torch.int64)
    if s <= 0:
        return v * (1 << (-s))
    if mode == "nearest":
        return (v + (1 << (s - 1))) >> s
    if mode == "stochastic":
        if r is None:
            raise ValueError("stochastic rounding needs the random words r")
        return (v + (r.to(torch.int64) >> (32 - s))) >> s
    raise ValueError(f"unknown rounding mode {mode!r}")


def _stochastic(acc: torch.Tensor, shift: int, seed: int, tid: int) -> torch.Tensor:
    """``rshift(acc, shift, stochastic)`` (not yet saturated) with ``idx`` = flat
    row-major index."""
    idx = torch.arange(acc.numel(), dtype=torch.int64).reshape(acc.shape)
    r = rand32(seed, tid, idx)
    return rshift(acc, shift, "stochastic", r)


def _check_i32(acc: torch.Tensor, what: str) -> None:
    if acc.numel() == 0:
        return
    bad = (acc > I32_MAX) | (acc < -I32_MAX)
    if bool(bad.any()):
        flat = int(torch.nonzero(bad.reshape(-1))[0, 0])
        pos = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), acc.shape))
        val = int(acc.reshape(-1)[flat])
        raise EdgecError(
            f"{what}: int32 accumulator overflow: element {list(pos)} = {val} is outside "
            f"[-(2**31-1), 2**31-1]; the compiler's reduction bound should have split or "
            f"rescaled this reduction (numerics.md section 6)")


def _check_f64(k: int, a: torch.Tensor, b: torch.Tensor) -> None:
    """float64 products are exact only if every partial sum stays below 2**53."""
    ma = int(a.abs().max()) if a.numel() else 0
    mb = int(b.abs().max()) if b.numel() else 0
    if k * ma * mb >= _F64_EXACT:
        raise EdgecError(f"reduction of {k} products of magnitude {ma}*{mb} cannot be "
                         f"computed exactly in float64")


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float64)


def _i64(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.int64)        # exact: t holds integers below 2**53


def _pair(v) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


# ----------------------------------------------------------------------------- views

def view_index(p: torch.Tensor, out_idx, in_idx, in_block) -> tuple:
    """Advanced index selecting the view of ``p``: rows ``out_idx`` of dim 0 (None = all),
    then along dim 1 the blocks ``in_idx`` of ``in_block`` consecutive elements."""
    rows = (torch.arange(p.shape[0]) if out_idx is None
            else torch.as_tensor([int(i) for i in out_idx], dtype=torch.long))
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= p.shape[0]):
        raise ValueError(f"out_idx {list(out_idx)} out of range for dim 0 of size {p.shape[0]}")
    if p.dim() == 1:
        if in_idx is not None:
            raise ValueError("a 1-D parameter cannot be viewed along dim 1 (in_idx given)")
        return (rows,)
    if in_idx is None:
        cols = torch.arange(p.shape[1])
    else:
        blk = int(in_block or 1)
        if p.shape[1] % blk:
            raise ValueError(f"dim 1 of size {p.shape[1]} is not a multiple of in_block {blk}")
        nb = p.shape[1] // blk
        blocks = torch.as_tensor([int(i) for i in in_idx], dtype=torch.long)
        if blocks.numel() and (int(blocks.min()) < 0 or int(blocks.max()) >= nb):
            raise ValueError(f"in_idx {list(in_idx)} out of range for {nb} blocks of {blk}")
        cols = (blocks[:, None] * blk + torch.arange(blk)[None, :]).reshape(-1)
    return (rows[:, None], cols[None, :])


def _view_of(p: torch.Tensor, at) -> tuple:
    return view_index(p, at.get("out_idx"), at.get("in_idx"), at.get("in_block", 1))


# ----------------------------------------------------------------------------- kernels

def _groups(g) -> int:
    g = int(1 if g is None else g)
    if g < 1:
        raise ValueError(f"groups {g} must be >= 1")
    return g


def conv_acc(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
             stride, pad, groups: int = 1) -> torch.Tensor:
    """``acc[n,o,y,x] = b[o] + sum_{c,kh,kw} X[n,g(o)*C/G+c,y*sh-ph+kh,x*sw-pw+kw]
    * W[o,c,kh,kw]`` (int64); ``W`` is ``[O, C/G, KH, KW]``, ``g(o) = o // (O/G)``."""
    G = _groups(groups)
    C, O = x.shape[1], w.shape[0]
    if C % G or O % G or w.shape[1] * G != C:
        raise ValueError(f"conv with groups={G}: input has {C} channels and the weight is "
                         f"{tuple(w.shape)}; expected [O, C/groups, KH, KW] with C and O "
                         f"divisible by groups")
    if b is not None and tuple(b.shape) != (O,):
        raise ValueError(f"bias of shape {tuple(b.shape)} does not match {O} output channels")
    _check_f64(w.shape[1] * w.shape[2] * w.shape[3], x, w)          # (C/G)*KH*KW products
    acc = _i64(F.conv2d(_f64(x), _f64(w), stride=_pair(stride), padding=_pair(pad),
                        groups=G))
    if b is not None:
        acc = acc + b.to(torch.int64).reshape(1, -1, 1, 1)
    return acc


def conv_eb_acc(dy: torch.Tensor, w: torch.Tensor, stride, pad, in_shape,
                groups: int = 1) -> torch.Tensor:
    """Adjoint of ``conv`` w.r.t. its input: ``acc[n, g*C/G+c, i, j]`` of numerics.md (int64)."""
    G = _groups(groups)
    in_shape = tuple(int(s) for s in in_shape)
    O, C = w.shape[0], in_shape[1]
    if C % G or O % G or w.shape[1] * G != C or dy.shape[1] != O:
        raise ValueError(f"conv_eb with groups={G}: in_shape {in_shape}, weight "
                         f"{tuple(w.shape)} and dy {tuple(dy.shape)} do not fit "
                         f"(weight [O, C/groups, KH, KW], dy [N, O, OH, OW])")
    (sh, sw), (kh, kw) = _pair(stride), (w.shape[2], w.shape[3])
    k = (O // G) * (-(-kh // sh)) * (-(-kw // sw))     # (O/G)*ceil(KH/sh)*ceil(KW/sw)
    _check_f64(k, dy, w)
    return _i64(torch.nn.grad.conv2d_input(in_shape, _f64(w), _f64(dy), stride=(sh, sw),
                                           padding=_pair(pad), groups=G))


def conv_wg_acc(dy: torch.Tensor, x: torch.Tensor, stride, pad, kernel,
                groups: int = 1) -> torch.Tensor:
    """``acc[o,c,kh,kw] = sum_{n,y,x} dy[n,o,y,x] * X[n,g(o)*C/G+c,y*sh-ph+kh,x*sw-pw+kw]``
    (int64), shape ``[O, C/G, KH, KW]``."""
    G = _groups(groups)
    kh, kw = _pair(kernel)
    O, C = dy.shape[1], x.shape[1]
    if C % G or O % G:
        raise ValueError(f"conv_wg with groups={G}: {C} input and {O} output channels are "
                         f"not both divisible by groups")
    wshape = (O, C // G, kh, kw)
    _check_f64(dy.shape[0] * dy.shape[2] * dy.shape[3], dy, x)
    return _i64(torch.nn.grad.conv2d_weight(_f64(x), wshape, _f64(dy), stride=_pair(stride),
                                            padding=_pair(pad), groups=G))


def _windows(x: torch.Tensor, kernel, stride, pad) -> torch.Tensor:
    """``[N,C,OH,OW,KH*KW]`` windows of ``x`` padded with -infinity (floor mode)."""
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel), _pair(stride), _pair(pad)
    xp = F.pad(x.to(torch.int64), (pw, pw, ph, ph), value=_NEG_INF)
    if xp.shape[2] < kh or xp.shape[3] < kw:
        raise ValueError(f"pool kernel {(kh, kw)} larger than the padded input "
                         f"{tuple(xp.shape[2:])}")
    win = xp.unfold(2, kh, sh).unfold(3, kw, sw)        # [N,C,OH,OW,KH,KW]
    win = win.reshape(*win.shape[:4], kh * kw)
    if win.numel() and bool((win.max(dim=-1).values == _NEG_INF).any()):
        raise ValueError("a pooling window lies entirely in the padding (its max is undefined)")
    return win


def maxpool(x: torch.Tensor, kernel, stride, pad) -> torch.Tensor:
    """Max over each window's positions inside the input (padding is -infinity)."""
    return _windows(x, kernel, stride, pad).max(dim=-1).values


def maxpool_bwd(dy: torch.Tensor, x: torch.Tensor, kernel, stride, pad) -> torch.Tensor:
    """Route each dy element to the FIRST (row-major kh, kw) max position of its window;
    ``sat8`` of the per-position sums."""
    (_, kw), (sh, sw), (ph, pw) = _pair(kernel), _pair(stride), _pair(pad)
    win = _windows(x, kernel, stride, pad)               # [N,C,OH,OW,K]
    N, C, OH, OW, K = win.shape
    if tuple(dy.shape) != (N, C, OH, OW):
        raise ValueError(f"dy shape {tuple(dy.shape)} does not match the pool output "
                         f"{(N, C, OH, OW)}")
    m = win.max(dim=-1, keepdim=True).values
    ar = torch.arange(K, dtype=torch.int64)
    first = torch.where(win == m, ar, K).min(dim=-1).values   # first max, row-major
    py = torch.arange(OH).reshape(1, 1, OH, 1) * sh + first // kw   # padded coordinates
    px = torch.arange(OW).reshape(1, 1, 1, OW) * sw + first % kw
    Hp, Wp = x.shape[2] + 2 * ph, x.shape[3] + 2 * pw
    base = (torch.arange(N * C).reshape(N, C, 1, 1)) * (Hp * Wp)
    flat = (base + py * Wp + px).reshape(-1)
    dxp = torch.zeros(N * C * Hp * Wp, dtype=torch.int64)
    dxp.index_add_(0, flat, dy.to(torch.int64).reshape(-1))
    dxp = dxp.reshape(N, C, Hp, Wp)[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]]
    return dxp.contiguous()


def loss_grad(z: torch.Tensor, labels: torch.Tensor, lut: torch.Tensor, rmul: int,
              shift: int, where: str = "loss_grad") -> torch.Tensor:
    """Integer softmax-minus-onehot of numerics.md section 4 (labels already checked)."""
    z = z.to(torch.int64)
    m = z.max(dim=1, keepdim=True).values
    d = m - z
    if d.numel() and int(d.max()) >= lut.numel():
        raise ValueError(f"max - z reaches {int(d.max())}, beyond the {lut.numel()}-entry LUT")
    E = lut[d]
    S = E.sum(dim=1, keepdim=True)
    _check_i32(S, f"{where} (softmax denominator S)")
    P = torch.div(E * (1 << 15), S, rounding_mode="floor")
    onehot = torch.zeros_like(P)
    onehot[torch.arange(z.shape[0]), labels.to(torch.long)] = 1
    G = P - (1 << 15) * onehot
    return sat8(rshift(G * int(rmul), shift, "nearest"))


def _exp_parts(z: torch.Tensor, lut: torch.Tensor, what: str):
    """E = LUT[max - z] and S = sum_k E of int8 logits (rows), checked."""
    z = z.to(torch.int64)
    d = z.max(dim=1, keepdim=True).values - z
    if d.numel() and int(d.max()) >= lut.numel():
        raise ValueError(f"{what}: max - z reaches {int(d.max())}, beyond the "
                         f"{lut.numel()}-entry LUT")
    E = lut[d]
    return E, E.sum(dim=1, keepdim=True)


def _const_lut(graph, name: str) -> torch.Tensor:
    if name not in graph.consts:
        raise ValueError(f"constant {name!r} (an exp LUT) is not in graph.consts")
    return torch.as_tensor([int(v) for v in graph.consts[name]], dtype=torch.int64)


def teacher_loss_grad(z: torch.Tensor, t: torch.Tensor, lut: torch.Tensor,
                      tlut: torch.Tensor, rmul: int, shift: int, kd: bool, thresh: int,
                      where: str = "loss_grad") -> torch.Tensor:
    """Loss gradient with a teacher's logits ``t`` as the target (numerics.md section 4)."""
    E, S = _exp_parts(z, lut, where)
    F, ST = _exp_parts(t, tlut, f"{where} (teacher)")
    _check_i32(S, f"{where} (softmax denominator S)")
    _check_i32(ST, f"{where} (teacher softmax denominator)")
    P = torch.div(E * (1 << 15), S, rounding_mode="floor")
    if kd:
        G = P - torch.div(F * (1 << 15), ST, rounding_mode="floor")
    else:
        t = t.to(torch.int64)
        K = t.shape[1]
        ks = torch.arange(K).expand_as(t)
        first = torch.where(t == t.max(dim=1, keepdim=True).values, ks, K).min(dim=1).values
        onehot = (ks == first[:, None]).to(torch.int64)
        confident = (1 << 30) >= int(thresh) * ST          # teacher max softmax >= thresh
        G = (P - (1 << 15) * onehot) * confident.to(torch.int64)
    return sat8(rshift(G * int(rmul), shift, "nearest"))


def sgd_update(M: torch.Tensor, G: torch.Tensor, lrmul: int, cshift: int, cbits: int,
               lrshift: int = 16, bound: int | None = None, mom: tuple | None = None):
    """``(M', r)`` of numerics.md section 4 (``bound`` None) or section 8 (the master's
    bound given): ``r = rshift(M', cshift)``, the compute copy before ``sat_cbits``.
    ``mom = (V, mumul, mushift, wdmul, wdshift)`` (momentum / weight decay): returns
    ``(M', r, V')`` with the momentum buffer ``V'`` of section 4."""
    if bound is None:
        bound = (2 ** (cbits - 1) - 1) << cshift
    Mi = M.to(torch.int64)
    step = rshift(G.to(torch.int64) * int(lrmul), lrshift, "nearest")
    if mom is not None:
        V, mumul, mushift, wdmul, wdshift = (mom[0], *(int(k) for k in mom[1:]))
        if not (0 <= mushift <= 31 and 0 <= wdshift <= 31 and 0 <= mumul <= 2**30):
            raise ValueError(f"sgd: mushift {mushift}, wdshift {wdshift} or mumul {mumul} "
                             f"out of range")
        decay = rshift(Mi * wdmul, wdshift, "nearest")
        step = (rshift(V.to(torch.int64) * mumul, mushift, "nearest") + step + decay)
        step = step.clamp(-I32_MAX, I32_MAX)
    Mn = (Mi - step).clamp(-bound, bound)
    if mom is not None:
        return Mn, rshift(Mn, cshift, "nearest"), step
    return Mn, rshift(Mn, cshift, "nearest")


def _round_div(a: int, b: int) -> int:
    """a / b rounded half up, b > 0 (exact integers)."""
    q, r = divmod(a, b)
    return q + (1 if 2 * r >= b else 0)


def bn_adapt(x: torch.Tensor, b: torch.Tensor, q: torch.Tensor, at: dict):
    """BatchNorm adaptation (docs/numerics.md): the statistics of x[N,C,...] per channel
    give the batch's inverse standard deviation as an int8 scale and its mean as a new
    bias (mode 0) or BN shift (mode 1); the constants move 2^-m of the way there."""
    xs = x.transpose(0, 1).reshape(x.shape[1], -1).to(torch.int64)
    cnt = xs.shape[1]
    s1s, s2s = xs.sum(1), (xs * xs).sum(1)
    _check_i32(s1s, "channel sum")
    _check_i32(s2s, "channel sum of squares")
    d, p, mom, eps = int(at["d"]), int(at["p"]), int(at["m"]), int(at["eps"])

    def scaled(num: int, den: int, e: int) -> int:        # num * 2^e / den, rounded
        return _round_div(num * 2**e, den) if e >= 0 else _round_div(num, den * 2**-e)

    nb, nq = b.clone(), q.clone()
    for k in range(xs.shape[0]):
        s1, s2 = int(s1s[k]), int(s2s[k])
        var = s2 * cnt - s1 * s1 + eps              # cnt^2 * (var + eps) in x's units
        num, den = 4 * cnt * cnt * 2**max(0, 2 * p), var * 2**max(0, -2 * p)
        qb = 127 if den == 0 else min(127, (math.isqrt(num // den) + 1) // 2)
        qo, bo = int(q[k]), int(b[k])
        nq[k] = qo + scaled(qb - qo, 1, -mom)
        if at["mode"] == 0:
            nb[k] = bo - scaled(s1, cnt, d - mom)
        else:
            nb[k] = bo + scaled(-scaled(s1 * qb, cnt, d) - bo, 1, -mom)
    return sat(nb, 32), sat8(nq)


def clamp(q: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """``clamp(q, lo, hi) = min(max(q, lo), hi)`` of numerics.md section 4."""
    return q.clamp(int(lo), int(hi))


def _int_pair(v, what: str) -> tuple[int, int]:
    try:
        lo, hi = v
    except (TypeError, ValueError):
        raise ValueError(f"attribute {what} = {v!r} is not a pair (lo, hi)") from None
    for b in (lo, hi):
        if isinstance(b, bool) or int(b) != b:
            raise ValueError(f"attribute {what} = {v!r} must hold integers")
    return int(lo), int(hi)


def _clamp_attr(at: dict, key: str, default) -> tuple[int, int]:
    """The op's ``clamp = (lo, hi)`` (``default`` when absent; None: required), checked
    against ``-127 <= lo <= hi <= 127``."""
    if key not in at or at[key] is None:
        if default is None:
            raise KeyError(key)
        return default
    lo, hi = _int_pair(at[key], key)
    if not -127 <= lo <= hi <= 127:
        raise ValueError(f"attribute {key} = {(lo, hi)} violates -127 <= lo <= hi <= 127")
    return lo, hi


def _dclamp_bounds(at: dict, fmt: "_Formats | None", v: str) -> tuple[int, int] | None:
    """A dynamic Hardtanh/ReLU6 (numerics.md section 8): its bounds (clo, chi) at exponent
    ce in integer units of v's current exponent E, rshift(c, E - ce, nearest), before any
    int8 limit; None for a fixed clamp (or without a table: the compiled bounds)."""
    if fmt is None or at.get("dclamp") is None:
        return None
    clo, chi, ce = (int(c) for c in at["dclamp"])
    k = fmt.E(v) - ce
    if not 0 <= k <= 31:
        raise ValueError(f"dynamic clamp: exponent {fmt.E(v)} - ce {ce} outside [0, 31]")
    if k == 0:
        return clo, chi
    return (clo + 2 ** (k - 1)) // 2 ** k, (chi + 2 ** (k - 1)) // 2 ** k


def _clamp_of(at: dict, fmt, v: str, default) -> tuple[int, int]:
    """The clamp (lo, hi) of an op writing v: dynamic bounds limited to +-127, else the
    clamp attribute."""
    b = _dclamp_bounds(at, fmt, v)
    if b is None:
        return _clamp_attr(at, "clamp", default)
    lo, hi = max(b[0], -127), min(b[1], 127)
    if not lo <= hi:
        raise ValueError(f"dynamic clamp bounds {(lo, hi)} are empty")
    return lo, hi


def _pass_range(at: dict, default) -> tuple[int, int]:
    """``pass_range = (lo, hi)`` of relu_bwd / hardtanh_bwd: dy passes where lo < y < hi."""
    if "pass_range" not in at or at["pass_range"] is None:
        if default is None:
            raise KeyError("pass_range")
        return default
    return _int_pair(at["pass_range"], "pass_range")


# ----------------------------------------------------------------------------- dynamic formats

class _Formats:
    """The exponent table of a training program (numerics.md section 8) while the step
    runs: shifts derived from E, statistics, the rule, the update's shifts."""

    def __init__(self, graph: Graph, table=None):
        """`table`: the step's starting table (None: the compiled one)."""
        self.reg = exponent_registers(graph)
        self.R = R = self.reg.count
        self.calm = CALM_STEPS
        if table is None:
            table = self.reg.table()
        t = [int(v) for v in torch.as_tensor(table).reshape(-1).tolist()]
        if len(t) != ROWS * R:
            raise EdgecError(f"run_reference: xtab has {len(t)} entries, the program's "
                             f"table has {ROWS * R} ({R} registers)")
        self.t = t
        self.moved = False

    def E(self, v: str) -> int:
        return sum(self.t[r] for r in self.reg.regs(v))

    def P(self, v: str) -> int:
        return sum(self.t[self.R + r] for r in self.reg.regs(v))

    def mac_shift(self, n: Node) -> int:
        return self.E(n.outputs[0]) - sum(self.E(v) for v in n.inputs[:2])

    def count(self, out: str, r: torch.Tensor, q: torch.Tensor, lo: int, hi: int) -> None:
        """Statistics of an int8 result (r rounded, q stored) of a dynamic register."""
        if out not in self.reg.stats or q.numel() == 0:
            return
        sat = ((r > 127) & (hi == 127)) | ((r < -127) & (lo == -127))
        self._add(self.reg.of[out], int(sat.sum()), int(q.abs().max()))

    def count_copy(self, out: str, r: torch.Tensor, c: torch.Tensor, cbits: int) -> None:
        """Statistics of an update's new compute copy (r rounded, c = sat_cbits(r))."""
        if out not in self.reg.stats or c.numel() == 0:
            return
        lim = 2 ** (cbits - 1) - 1
        self._add(self.reg.of[out], int((r.abs() > lim).sum()), int(c.abs().max()))

    def _add(self, k: int, nsat: int, qmax: int) -> None:
        a = 3 * self.R + 2 * k
        self.t[a] = min(2**31 - 1, self.t[a] + nsat)
        self.t[a + 1] = max(self.t[a + 1], qmax)

    def move(self) -> None:
        """EXPUPD: every register's exponent moves by its statistics."""
        R, t = self.R, self.t
        for k in range(R):
            e, c = t[k], t[2 * R + k]
            nsat, qmax = t[3 * R + 2 * k], t[3 * R + 2 * k + 1]
            t[R + k] = e
            t[5 * R + 2 * k], t[5 * R + 2 * k + 1] = nsat, qmax
            t[3 * R + 2 * k] = t[3 * R + 2 * k + 1] = 0
            if nsat > t[9 * R + k]:
                e, c = e + 1, 0
            elif qmax < 64:
                c += 1
                if c >= self.calm:
                    e, c = e - 1, 0
            else:
                c = 0
            t[k] = min(max(e, t[7 * R + k]), t[8 * R + k])
            t[2 * R + k] = c
        self.moved = True

    def sgd(self, n: Node, graph: Graph) -> tuple[int, int, int]:
        """(lrshift, cshift, master bound) of an update after the move."""
        V, at = graph.values, n.attrs
        e_m = V[n.inputs[1]].exp
        lrshift = 0
        if not at.get("ng"):
            lrshift = int(at["lrshift"]) + V[n.inputs[2]].exp - self.P(n.inputs[2])
        cshift = self.E(n.inputs[0]) - e_m
        hi = sum(self.t[8 * self.R + r] for r in self.reg.regs(n.inputs[0]))
        return lrshift, cshift, master_bound(int(at["cbits"]), hi, e_m)

    def tensor(self) -> torch.Tensor:
        return torch.tensor(self.t, dtype=torch.int64)


# ----------------------------------------------------------------------------- interpreter

_RANGE = {"i8": 127, "i32": I32_MAX}


def _where(i: int, n: Node) -> str:
    parts = [f"node {i} '{n.op}'"]
    if n.layer:
        parts.append(f"layer {n.layer}")
    if n.loc:
        parts.append(n.loc)
    return parts[0] + (" (" + ", ".join(parts[1:]) + ")" if len(parts) > 1 else "")


def _stored(fmt: _Formats | None, n: Node, r: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """``clamp(sat8(r), lo, hi)``, counted in the statistics of a dynamic format."""
    q = clamp(sat8(r), lo, hi)
    if fmt:
        fmt.count(n.outputs[0], r, q, lo, hi)
    return q


def _lut(graph: Graph, at: dict, fmt: _Formats | None, z: str) -> torch.Tensor:
    """The exp table for the logits' exponent (dynamic: one of nlut tables)."""
    lut = _const_lut(graph, at["lut"])
    if "lut_lo" not in at:
        return lut
    e = fmt.E(z) if fmt else graph.values[z].exp        # no table: the compiled exponent
    j = e - int(at["lut_lo"])
    if not 0 <= j < int(at["nlut"]):
        raise ValueError(f"no exp table for logit exponent {e}")
    return lut[256 * j:256 * (j + 1)]


@dataclass(frozen=True)
class _Step:
    """What a reference rule sees besides the node and its operands."""
    seed: int
    graph: Graph
    where: str
    fmt: _Formats | None

    def chk(self, acc: torch.Tensor) -> torch.Tensor:
        _check_i32(acc, self.where)
        return acc


def _mac_forward(n: Node, a: list, s: _Step):
    at, fmt = n.attrs, s.fmt
    if "relu" in at:
        raise ValueError("attribute 'relu' is no longer supported: a fused activation is "
                         "the attribute clamp = (lo, hi) (numerics.md section 4)")
    x, w = a[0], a[1]
    b = a[2] if len(a) > 2 else None
    if n.op == "linear":
        if x.dim() != 2 or w.dim() != 2:
            raise ValueError(f"linear expects x [N,F] and w [O,F], got "
                             f"{tuple(x.shape)} and {tuple(w.shape)}")
        acc = conv_acc(x[:, :, None, None], w[:, :, None, None], b, 1, 0)[:, :, 0, 0]
    else:
        acc = conv_acc(x, w, b, at["stride"], at["pad"], at.get("groups", 1))
    r = rshift(s.chk(acc), fmt.mac_shift(n) if fmt else at["shift"], "nearest")
    return [_stored(fmt, n, r, *_clamp_of(at, fmt, n.outputs[0], (-127, 127)))]


def _chmul(n: Node, a: list, s: _Step):
    """x * s, s [N, C, 1, 1] broadcast; nearest in the forward, stochastic for an error."""
    at, fmt = n.attrs, s.fmt
    x, g = a
    if tuple(g.shape) != tuple(x.shape[:2]) + (1,) * (x.dim() - 2):
        raise ValueError(f"chmul: the gate {tuple(g.shape)} does not broadcast over "
                         f"{tuple(x.shape)} per channel")
    acc = x.to(torch.int64) * g.to(torch.int64)
    shift = fmt.mac_shift(n) if fmt else at["shift"]
    if at["grad"]:
        r = _stochastic(acc, shift, s.seed, at["tid"])
    else:
        r = rshift(acc, shift, "nearest")
    return [_stored(fmt, n, r, -127, 127)]


def _activation(n: Node, a: list, s: _Step):
    """standalone activation on int8: q = clamp(x, lo, hi), same exponent"""
    bounds = _clamp_of(n.attrs, s.fmt, n.outputs[0], (0, 127) if n.op == "relu" else None)
    return [clamp(a[0], *bounds)]


def _add(n: Node, a: list, s: _Step):
    at, fmt = n.attrs, s.fmt
    x, y = a
    if tuple(x.shape) != tuple(y.shape):
        raise ValueError(f"add operands differ in shape: {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    sa, sb, shift = int(at["sa"]), int(at["sb"]), at["shift"]
    if fmt:
        ea, eb = fmt.E(n.inputs[0]), fmt.E(n.inputs[1])
        m = min(ea, eb)
        sa, sb, shift = ea - m, eb - m, fmt.E(n.outputs[0]) - m
    for nm, sv in (("sa", sa), ("sb", sb)):
        if not 0 <= sv <= 31:
            raise ValueError(f"add: {nm} = {sv} outside [0, 31]")
    v = x.to(torch.int64) * (1 << sa) + y.to(torch.int64) * (1 << sb)
    lo, hi = _clamp_of(at, fmt, n.outputs[0], (-127, 127))
    if at["grad"]:
        r = _stochastic(v, shift, s.seed, at["tid"])
    else:
        r = rshift(v, shift, "nearest")
    return [_stored(fmt, n, r, lo, hi)]


def _loss_grad(n: Node, a: list, s: _Step):
    at, graph, where = n.attrs, s.graph, s.where
    if at.get("target", "labels") != "labels":
        z, t = a
        if tuple(t.shape) != tuple(z.shape):
            raise ValueError(f"teacher logits {tuple(t.shape)} differ from the logits "
                             f"{tuple(z.shape)}")
        lut, tlut = _lut(graph, at, s.fmt, n.inputs[0]), _const_lut(graph, at["tlut"])
        return [teacher_loss_grad(z, t, lut, tlut, at["rmul"], at["shift"],
                                  at["target"] == "kd", at.get("thresh", 0), where)]
    z, labels = a
    N, K = z.shape
    if labels.shape != (N,):
        raise ValueError(f"labels have shape {tuple(labels.shape)}, expected {(N,)}")
    bad = (labels < 0) | (labels >= K)
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0, 0])
        raise EdgecError(f"{where}: label {int(labels[i])} of sample {i} is out of "
                         f"range [0, {K}); labels must be class indices of the logits")
    return [loss_grad(z, labels, _lut(graph, at, s.fmt, n.inputs[0]), at["rmul"],
                      at["shift"], where)]


def _linear_eb_acc(a, at):
    dy, w = a
    _check_f64(w.shape[0], dy, w)
    return _i64(_f64(dy) @ _f64(w))


def _linear_wg_acc(a, at):
    dy, x = a
    _check_f64(dy.shape[0], dy, x)
    return _i64(_f64(dy).t() @ _f64(x))


def _bias_grad_acc(a, at):
    dy = a[0]
    dims = [d for d in range(dy.dim()) if d != 1]
    return dy.sum(dim=dims) if dims else dy.clone()


#: the int64 accumulator of each backward reduction (before its stochastic rounding)
_BACKWARD_ACC = {
    "conv_eb": lambda a, at: conv_eb_acc(a[0], a[1], at["stride"], at["pad"], at["in_shape"],
                                         at.get("groups", 1)),
    "conv_wg": lambda a, at: conv_wg_acc(a[0], a[1], at["stride"], at["pad"], at["kernel"],
                                         at.get("groups", 1)),
    "linear_eb": _linear_eb_acc,
    "linear_wg": _linear_wg_acc,
    "bias_grad": _bias_grad_acc,
    "chmul_ds": lambda a, at: (a[0] * a[1]).sum(dim=tuple(range(2, a[0].dim())), keepdim=True),
}


def _backward_reduction(n: Node, a: list, s: _Step):
    at, fmt = n.attrs, s.fmt
    acc = _BACKWARD_ACC[n.op](a, at)
    shift = at["shift"]
    if fmt:
        shift = fmt.E(n.outputs[0]) - sum(fmt.E(v) for v in n.inputs)
    return [_stored(fmt, n, _stochastic(s.chk(acc), shift, s.seed, at["tid"]), -127, 127)]


def _activation_bwd(n: Node, a: list, s: _Step):
    at, op = n.attrs, n.op
    dy, y = a
    if tuple(dy.shape) != tuple(y.shape):
        raise ValueError(f"{op}: dy {tuple(dy.shape)} and y {tuple(y.shape)} differ in "
                         f"shape")
    lo, hi = _pass_range(at, (0, 128) if op == "relu_bwd" else None)
    b = _dclamp_bounds(at, s.fmt, n.inputs[1])
    if b is not None:       # a bound beyond int8: the saturated +-127 still passes
        lo, hi = (b[0] if b[0] >= -127 else -128), (b[1] if b[1] <= 127 else 128)
    return [torch.where((y > lo) & (y < hi), dy, torch.zeros_like(dy))]


def _sgd_operands(n: Node, a: list):
    """(p, M, g, momentum operands or None) of a quantized sgd, checked."""
    at = n.attrs
    ng, mom = bool(at.get("ng")), bool(at.get("mom"))
    if len(a) != 3 - ng + mom or len(n.outputs) != 2 + mom or (ng and mom):
        raise ValueError("a quantized sgd takes (p, master, g) (with ng: (p, master); "
                         "with mom: (p, master, g, mom)) and gives (p_new, master_new) "
                         "(with mom: (p_new, master_new, mom_new))")
    p, M = a[0], a[1]
    if mom and tuple(a[3].shape) != tuple(M.shape):
        raise ValueError(f"momentum buffer {tuple(a[3].shape)} and master "
                         f"{tuple(M.shape)} differ in shape")
    g = torch.zeros_like(M[_view_of(M, at)]) if ng else a[2]
    if tuple(p.shape) != tuple(M.shape):
        raise ValueError(f"compute copy {tuple(p.shape)} and master {tuple(M.shape)} "
                         f"differ in shape")
    return p, M, g, mom


def _sgd(n: Node, a: list, s: _Step):
    at, fmt = n.attrs, s.fmt
    p, M, g, mom = _sgd_operands(n, a)
    ix = _view_of(M, at)
    Msel = M[ix]
    if g.numel() != Msel.numel():
        raise ValueError(f"gradient of shape {tuple(g.shape)} does not fit the view "
                         f"of shape {tuple(Msel.shape)}")
    mo = ((a[3][ix], at["mumul"], at["mushift"], at["wdmul"], at["wdshift"])
          if mom else None)
    Vn = None
    if fmt:
        lrshift, cshift, bound = fmt.sgd(n, s.graph)
        if not (0 <= lrshift <= 31 and -31 <= cshift <= 31):
            raise ValueError(f"sgd: lrshift {lrshift} or cshift {cshift} out of range")
        Mn, r, *Vn = sgd_update(Msel, g.reshape(Msel.shape), at["lrmul"], cshift,
                                at["cbits"], lrshift, bound, mo)
        Cn = sat(r, int(at["cbits"]))
        fmt.count_copy(n.outputs[0], r, Cn, int(at["cbits"]))
    else:
        Mn, Cn, *Vn = sgd_update(Msel, g.reshape(Msel.shape), at["lrmul"], at["cshift"],
                                 at["cbits"], at.get("lrshift", 16), None, mo)
    p_new, M_new = p.clone(), M.clone()
    p_new[ix] = Cn
    M_new[ix] = Mn
    if mom:
        V_new = a[3].clone()
        V_new[ix] = Vn[0]
        return [p_new, M_new, V_new]
    return [p_new, M_new]


def _bn_adapt(n: Node, a: list, s: _Step):
    at = n.attrs
    x, b, q = a
    ib, iq = view_index(b, at.get("out_idx"), None, 1), view_index(q, at.get("out_idx"), None, 1)
    nb, nq = bn_adapt(x, b[ib], q[iq].reshape(-1), at)
    b_new, q_new = b.clone(), q.clone()
    b_new[ib] = nb
    q_new[iq] = nq.reshape(q_new[iq].shape)
    return [b_new, q_new]


#: one rule per op (op registry stage ``reference``): (node, operands, step) -> outputs
REFERENCE_RULES = {
    "conv": _mac_forward,
    "linear": _mac_forward,
    "relu": _activation,
    "hardtanh": _activation,
    "add": _add,
    "maxpool": lambda n, a, s: [maxpool(a[0], n.attrs["kernel"], n.attrs["stride"],
                                        n.attrs["pad"])],
    "reshape": lambda n, a, s: [a[0].reshape(tuple(int(d) for d in n.attrs["shape"]))],
    "concat": lambda n, a, s: [torch.cat(list(a), dim=1)],      # one format: a copy
    "chmul": _chmul, "chmul_ds": _backward_reduction,
    "slice": lambda n, a, s: [a[0][:, int(n.attrs["c0"]):int(n.attrs["c1"])].clone()],
    "loss_grad": _loss_grad,
    "conv_eb": _backward_reduction,
    "conv_wg": _backward_reduction,
    "linear_eb": _backward_reduction,
    "linear_wg": _backward_reduction,
    "bias_grad": _backward_reduction,
    "relu_bwd": _activation_bwd,
    "hardtanh_bwd": _activation_bwd,
    "maxpool_bwd": lambda n, a, s: [sat8(s.chk(maxpool_bwd(
        a[0], a[1], n.attrs["kernel"], n.attrs["stride"], n.attrs["pad"])))],
    "wview": lambda n, a, s: [a[0][_view_of(a[0], n.attrs)].contiguous()],
    "sgd": _sgd,
    "bn_adapt": _bn_adapt,
}


def _eval(n: Node, a: list[torch.Tensor], seed: int, graph: Graph, where: str,
          fmt: _Formats | None = None):
    rule = REFERENCE_RULES.get(n.op)
    if rule is None:
        raise ValueError(f"op {n.op!r} has no reference semantics")
    return rule(n, a, _Step(seed, graph, where, fmt))


def _take_input(name: str, inputs: dict, graph: Graph) -> torch.Tensor:
    if name not in inputs:
        raise EdgecError(f"run_reference: no input tensor for {name!r}")
    t = torch.as_tensor(inputs[name])
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise EdgecError(f"run_reference: input {name!r} has dtype {t.dtype}; the reference "
                         f"takes integer tensors (quantize on the host first)")
    t = t.to(torch.int64).clone()          # never alias (or later mutate) the caller's data
    v = graph.values.get(name)
    if v is not None:
        if tuple(t.shape) != tuple(v.shape):
            raise EdgecError(f"run_reference: input {name!r} has shape {tuple(t.shape)}, "
                             f"the graph expects {tuple(v.shape)}")
        lim = _RANGE.get(v.dtype)
        if lim is not None and t.numel() and int(t.abs().max()) > lim:
            raise EdgecError(f"run_reference: input {name!r} ({v.dtype}) holds "
                             f"{int(t.abs().max())} in magnitude, outside +-{lim}")
    return t


def run_reference(graph: Graph, inputs: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Execute the quantized ``graph`` per docs/numerics.md.

    ``inputs``: ``"x"``, ``"labels"``, every ``param.value`` and the ``"master:<name>"`` of
    every parameter whose master the graph declares or uses, i.e. every trainable one (all
    required; a frozen, non-trainable parameter has no master); any other graph value that
    no node produces may be supplied as well.
    ``seed``: the uint32 ``rng_seed`` of the stochastic rounding.
    Returns every value of the graph as an int64 tensor of exact integers.
    Raises ``EdgecError`` (naming node, layer and location) on an int32 accumulator
    overflow or a label outside ``[0, K)``, and on malformed graphs or inputs."""
    seed = int(seed)
    if not 0 <= seed <= _M32:
        raise EdgecError(f"run_reference: seed {seed} is not a uint32")
    env: dict[str, torch.Tensor] = {}
    produced = {o for n in graph.nodes for o in n.outputs}
    consumed = {v for n in graph.nodes for v in n.inputs}
    names = list(dict.fromkeys(graph.inputs))
    for pname, p in graph.params.items():
        if p.value not in names:
            names.append(p.value)
        # only trainable parameters have a master (and an sgd node); a frozen constant
        # (e.g. a BatchNorm's scale/shift, an average pool's weight) has neither.  A
        # master is required exactly when the graph declares or uses it.
        master = f"master:{pname}"
        needed = master in graph.values or master in consumed
        if needed and master not in produced and master not in names:
            names.append(master)
    # other un-produced values (e.g. a lone op's operands in a test graph) may be supplied too
    names += [k for k in inputs if k in graph.values and k not in produced and k not in names]
    for name in names:
        env[name] = _take_input(name, inputs, graph)
    fmt = _Formats(graph, inputs.get("xtab")) if is_dynamic(graph) else None
    with torch.no_grad():
        for i, n in enumerate(graph.nodes):
            where = _where(i, n)
            if fmt and n.op == "sgd" and not fmt.moved:
                fmt.move()
            try:
                args = [env[v] for v in n.inputs]
            except KeyError as e:
                raise EdgecError(f"{where}: input {e.args[0]!r} is not defined") from None
            try:
                outs = _eval(n, args, seed, graph, where, fmt)
            except EdgecError:
                raise
            except (KeyError, ValueError, RuntimeError, IndexError, TypeError) as e:
                what = f"missing attribute {e.args[0]!r}" if isinstance(e, KeyError) else str(e)
                raise EdgecError(f"{where}: {what}") from e
            if len(outs) != len(n.outputs):
                raise EdgecError(f"{where}: has {len(n.outputs)} outputs, the op makes "
                                 f"{len(outs)}")
            for name, t in zip(n.outputs, outs):
                t = t.to(torch.int64).contiguous()
                v = graph.values.get(name)
                if v is not None:
                    if tuple(t.shape) != tuple(v.shape):
                        raise EdgecError(f"{where}: output {name!r} has shape "
                                         f"{tuple(t.shape)}, the graph declares "
                                         f"{tuple(v.shape)}")
                    lim = _RANGE.get(v.dtype)
                    if lim is not None and t.numel() and int(t.abs().max()) > lim:
                        raise EdgecError(f"{where}: output {name!r} holds "
                                         f"{int(t.abs().max())} in magnitude, outside the "
                                         f"{v.dtype} range +-{lim}")
                env[name] = t
    if fmt:
        env["xtab"] = fmt.tensor()
    return env
