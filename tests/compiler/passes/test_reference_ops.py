"""Reference interpreter: grouped convolutions, clamp, add, standalone relu/hardtanh,
relu_bwd/hardtanh_bwd pass_range and frozen (non-trainable) parameters, each against an
independent brute-force implementation of docs/numerics.md written here with plain
Python loops (nothing under test from compiler/reference.py is reused)."""
from __future__ import annotations

import math

import pytest
import torch

from edgec.compiler.ir.graph import Graph, Param
from edgec.compiler.reference import conv_acc, conv_eb_acc, run_reference
from edgec.isa.errors import EdgecError

M32 = 0xFFFFFFFF


# ------------------------------------------------------------------ naive numerics.md

def n_rand32(seed, tid, idx):
    h = (seed * 0x9E3779B1 + tid * 0x85EBCA77 + idx * 0xC2B2AE3D) % 2**32
    h ^= h >> 16
    h = (h * 0x7FEB352D) % 2**32
    h ^= h >> 15
    h = (h * 0x846CA68B) % 2**32
    h ^= h >> 16
    return h


def n_round(v, s, r=None):
    """rshift: nearest when r is None, else stochastic with the random word r."""
    if s <= 0:
        return v * 2 ** (-s)
    if r is None:
        return (v + 2 ** (s - 1)) // 2**s        # Python // is floor division
    return (v + (r >> (32 - s))) // 2**s


def n_sat8(v):
    return min(max(v, -127), 127)


def n_clamp(q, lo, hi):
    return min(max(q, lo), hi)


def rint(g, shape, lo=-127, hi=127):
    return torch.randint(lo, hi + 1, shape, generator=g, dtype=torch.int64)


def zeros(*shape):
    if len(shape) == 1:
        return [0] * shape[0]
    return [zeros(*shape[1:]) for _ in range(shape[0])]


def flat(nested):
    out = []

    def walk(a):
        if isinstance(a, list):
            for e in a:
                walk(e)
        else:
            out.append(a)
    walk(nested)
    return out


def n_stoch_nested(acc, shape, shift, seed, tid):
    """sat8(rshift(acc, shift, stochastic)) with idx = flat row-major index."""
    vals = [n_sat8(n_round(v, shift, n_rand32(seed, tid, i))) for i, v in enumerate(flat(acc))]
    return torch.tensor(vals, dtype=torch.int64).reshape(shape)


def out_hw(H, W, k, st, pd):
    return (H + 2 * pd[0] - k[0]) // st[0] + 1, (W + 2 * pd[1] - k[1]) // st[1] + 1


def n_gconv_acc(X, Wt, B, st, pd, G):
    """acc[n,o,y,x] = b[o] + sum_{c<C/G,kh,kw} X[n, g(o)*C/G+c, ...] * W[o,c,kh,kw]."""
    N, C, H, Wd = X.shape
    O, Cg, KH, KW = Wt.shape
    assert Cg * G == C
    OH, OW = out_hw(H, Wd, (KH, KW), st, pd)
    X, Wl = X.tolist(), Wt.tolist()
    acc = zeros(N, O, OH, OW)
    for n in range(N):
        for o in range(O):
            grp = o // (O // G)
            for y in range(OH):
                for x in range(OW):
                    a = B[o] if B is not None else 0
                    for c in range(Cg):
                        for kh in range(KH):
                            for kw in range(KW):
                                i, j = y * st[0] - pd[0] + kh, x * st[1] - pd[1] + kw
                                if 0 <= i < H and 0 <= j < Wd:
                                    a += X[n][grp * Cg + c][i][j] * Wl[o][c][kh][kw]
                    acc[n][o][y][x] = a
    return acc


def n_gconv_eb_acc(DY, Wt, st, pd, in_shape, G):
    """Scatter form: every dy[n,o,y,x] * W[o,c,kh,kw] lands on
    acc[n, g(o)*C/G + c, y*sh-ph+kh, x*sw-pw+kw] when that lies inside the input."""
    N, C, H, Wd = in_shape
    _, O, OH, OW = DY.shape
    _, Cg, KH, KW = Wt.shape
    DY, Wl = DY.tolist(), Wt.tolist()
    acc = zeros(N, C, H, Wd)
    for n in range(N):
        for o in range(O):
            grp = o // (O // G)
            for y in range(OH):
                for x in range(OW):
                    d = DY[n][o][y][x]
                    for c in range(Cg):
                        for kh in range(KH):
                            for kw in range(KW):
                                i, j = y * st[0] - pd[0] + kh, x * st[1] - pd[1] + kw
                                if 0 <= i < H and 0 <= j < Wd:
                                    acc[n][grp * Cg + c][i][j] += d * Wl[o][c][kh][kw]
    return acc


def n_gconv_wg_acc(DY, X, st, pd, k, G):
    N, O, OH, OW = DY.shape
    _, C, H, Wd = X.shape
    Cg = C // G
    DY, X = DY.tolist(), X.tolist()
    acc = zeros(O, Cg, k[0], k[1])
    for o in range(O):
        grp = o // (O // G)
        for c in range(Cg):
            for kh in range(k[0]):
                for kw in range(k[1]):
                    a = 0
                    for n in range(N):
                        for y in range(OH):
                            for x in range(OW):
                                i, j = y * st[0] - pd[0] + kh, x * st[1] - pd[1] + kw
                                if 0 <= i < H and 0 <= j < Wd:
                                    a += DY[n][o][y][x] * X[n][grp * Cg + c][i][j]
                    acc[o][c][kh][kw] = a
    return acc


# ------------------------------------------------------------------ graph helpers

def run1(op, ins, out_shape, attrs, seed=0, out_dtype="i8"):
    """One-node graph: ins = [(name, tensor, dtype)]; returns the output tensor."""
    g = Graph()
    g.inputs = ["x", "labels"]
    inputs = {}
    for name, t, dt in ins:
        g.add_value(name, tuple(t.shape), dt, 0)
        inputs[name] = t
    for extra, dt in (("x", "i8"), ("labels", "i32")):
        if extra not in inputs:
            g.add_value(extra, (1,), dt, 0)
            inputs[extra] = torch.zeros(1, dtype=torch.int64)
    g.add_value("out", tuple(out_shape), out_dtype, 0)
    g.add_node(op, [n for n, _, _ in ins], ["out"], attrs, layer="L", loc="m.py:1")
    return run_reference(g, inputs, seed)["out"]


# ------------------------------------------------------------------ grouped convolutions

GCONV_CASES = [
    # N, C, O, G, (H, W), kernel, stride, pad
    (2, 4, 6, 2, (5, 5), (3, 3), (1, 1), (1, 1)),
    (1, 8, 4, 4, (6, 5), (3, 2), (2, 1), (0, 1)),
    (2, 4, 8, 4, (5, 6), (2, 3), (1, 2), (1, 0)),
    (2, 4, 4, 4, (7, 6), (3, 3), (2, 2), (1, 1)),     # depthwise, stride 2, pad 1
    (1, 6, 6, 6, (5, 7), (3, 3), (3, 2), (2, 1)),     # depthwise, stride > pad, pad 2
    (2, 3, 3, 3, (4, 4), (1, 1), (1, 1), (0, 0)),     # depthwise 1x1 (BatchNorm lowering)
]


@pytest.mark.parametrize("N,C,O,G,hw,k,st,pd", GCONV_CASES)
def test_grouped_conv_fp_matches_naive(N, C, O, G, hw, k, st, pd):
    g = torch.Generator().manual_seed(100 + G + C)
    x, w = rint(g, (N, C, *hw)), rint(g, (O, C // G, *k))
    b = rint(g, (O,), -4000, 4000)
    acc = n_gconv_acc(x, w, b.tolist(), st, pd, G)
    OH, OW = out_hw(*hw, k, st, pd)
    shift = 7 + round(math.log2((C // G) * k[0] * k[1]) / 2)      # outputs spread ~+-70
    for clamp in ((-127, 127), (0, 127), (-40, 25)):
        exp = [[[[n_clamp(n_sat8(n_round(a, shift)), *clamp) for a in r] for r in ch]
                for ch in im] for im in acc]
        got = run1("conv", [("x", x, "i8"), ("w", w, "i8"), ("b", b, "i32")], (N, O, OH, OW),
                   {"stride": st, "pad": pd, "groups": G, "shift": shift, "clamp": clamp})
        assert got.tolist() == exp
    vals = set(flat(exp))
    assert -40 in vals and 25 in vals and len(vals) > 20      # clamp and rounding both bite


@pytest.mark.parametrize("N,C,O,G,hw,k,st,pd", GCONV_CASES)
def test_grouped_conv_eb_wg_match_naive(N, C, O, G, hw, k, st, pd):
    g = torch.Generator().manual_seed(200 + G + O)
    x, w = rint(g, (N, C, *hw)), rint(g, (O, C // G, *k))
    OH, OW = out_hw(*hw, k, st, pd)
    dy = rint(g, (N, O, OH, OW))
    seed, tid = 0x5EED1234, 9
    eb = n_gconv_eb_acc(dy, w, st, pd, (N, C, *hw), G)
    got = run1("conv_eb", [("dy", dy, "i8"), ("w", w, "i8")], (N, C, *hw),
               {"stride": st, "pad": pd, "groups": G, "in_shape": (N, C, *hw), "shift": 7,
                "tid": tid}, seed=seed)
    assert torch.equal(got, n_stoch_nested(eb, (N, C, *hw), 7, seed, tid))
    wg = n_gconv_wg_acc(dy, x, st, pd, k, G)
    got = run1("conv_wg", [("dy", dy, "i8"), ("x", x, "i8")], (O, C // G, *k),
               {"stride": st, "pad": pd, "groups": G, "kernel": k, "shift": 9,
                "tid": tid + 1}, seed=seed)
    assert torch.equal(got, n_stoch_nested(wg, (O, C // G, *k), 9, seed, tid + 1))


def test_grouped_conv_is_blockdiagonal_dense_conv():
    """groups=G equals an ordinary conv whose weight is zero outside its group's block."""
    g = torch.Generator().manual_seed(7)
    N, C, O, G = 2, 6, 9, 3
    x, w = rint(g, (N, C, 5, 5)), rint(g, (O, C // G, 3, 3))
    dense = torch.zeros(O, C, 3, 3, dtype=torch.int64)
    for o in range(O):
        grp = o // (O // G)
        dense[o, grp * (C // G):(grp + 1) * (C // G)] = w[o]
    a = {"stride": (2, 1), "pad": (1, 1), "shift": 8, "clamp": (-127, 127)}
    got = run1("conv", [("x", x, "i8"), ("w", w, "i8")], (N, O, 3, 5), dict(a, groups=G))
    ref = run1("conv", [("x", x, "i8"), ("w", dense, "i8")], (N, O, 3, 5), a)
    assert torch.equal(got, ref)
    # shift 0, tiny values: the same through the backward ops (deterministic, no rounding)
    xs, ws = x.clamp(-1, 1), w.clamp(-1, 1)
    dy = rint(g, (N, O, 3, 5), -1, 1)
    dense = torch.zeros(O, C, 3, 3, dtype=torch.int64)
    for o in range(O):
        grp = o // (O // G)
        dense[o, grp * (C // G):(grp + 1) * (C // G)] = ws[o]
    b = {"stride": (2, 1), "pad": (1, 1), "shift": 0, "tid": 1}
    got = run1("conv_eb", [("dy", dy, "i8"), ("w", ws, "i8")], (N, C, 5, 5),
               dict(b, groups=G, in_shape=(N, C, 5, 5)))
    ref = run1("conv_eb", [("dy", dy, "i8"), ("w", dense, "i8")], (N, C, 5, 5),
               dict(b, in_shape=(N, C, 5, 5)))
    assert torch.equal(got, ref)
    got = run1("conv_wg", [("dy", dy, "i8"), ("x", xs, "i8")], (O, C // G, 3, 3),
               dict(b, groups=G, kernel=(3, 3)))
    ref = run1("conv_wg", [("dy", dy, "i8"), ("x", xs, "i8")], (O, C, 3, 3),
               dict(b, kernel=(3, 3)))
    for o in range(O):
        grp = o // (O // G)
        assert torch.equal(got[o], ref[o, grp * (C // G):(grp + 1) * (C // G)])


def test_float64_exactness_bound_counts_products_per_group():
    """The 2**53 bound uses the products of ONE output: FP (C/G)*KH*KW, EB
    (O/G)*ceil(KH/sh)*ceil(KW/sw).  Magnitudes 2**26 make one product 2**52."""
    big = 2**26
    dy = torch.zeros(1, 4, 2, 2, dtype=torch.int64)
    dy[0, 1, 1, 0] = big
    w = torch.zeros(4, 1, 3, 3, dtype=torch.int64)
    w[1, 0, 2, 1] = -big
    # depthwise, stride 3 = kernel: each input element gets exactly one product -> exact
    acc = conv_eb_acc(dy, w, (3, 3), (0, 0), (1, 4, 6, 6), groups=4)
    exp = torch.zeros(1, 4, 6, 6, dtype=torch.int64)
    exp[0, 1, 3 + 2, 0 + 1] = -big * big
    assert torch.equal(acc, exp)
    # the same sizes with groups=1 (4 products per output) cannot be exact in float64
    with pytest.raises(EdgecError, match="float64"):
        conv_eb_acc(dy, w.repeat(1, 4, 1, 1), (3, 3), (0, 0), (1, 4, 6, 6))
    # FP: (C/G)*KH*KW = 1 product per output for a depthwise 1x1
    x = torch.zeros(1, 4, 2, 2, dtype=torch.int64)
    x[0, 2, 0, 1] = big
    w1 = torch.full((4, 1, 1, 1), big, dtype=torch.int64)
    acc = conv_acc(x, w1, None, (1, 1), (0, 0), groups=4)
    assert acc[0, 2, 0, 1].item() == big * big and int(acc.abs().sum()) == big * big
    with pytest.raises(EdgecError, match="float64"):
        conv_acc(x, w1.repeat(1, 4, 1, 1), None, (1, 1), (0, 0))


def test_grouped_conv_shape_errors():
    x, w = torch.zeros(1, 4, 3, 3, dtype=torch.int64), torch.zeros(4, 1, 1, 1, dtype=torch.int64)
    with pytest.raises(EdgecError, match=r"conv.*groups"):
        run1("conv", [("x", x, "i8"), ("w", w, "i8")], (1, 4, 3, 3),
             {"stride": (1, 1), "pad": (0, 0), "groups": 2, "shift": 0})
    with pytest.raises(EdgecError, match=r"conv.*groups"):
        run1("conv", [("x", x, "i8"), ("w", w, "i8")], (1, 4, 3, 3),
             {"stride": (1, 1), "pad": (0, 0), "groups": 3, "shift": 0})


def test_old_relu_attribute_is_refused():
    x, w = torch.ones(1, 1, 1, 1, dtype=torch.int64), torch.ones(1, 1, 1, 1, dtype=torch.int64)
    with pytest.raises(EdgecError, match="relu.*clamp"):
        run1("conv", [("x", x, "i8"), ("w", w, "i8")], (1, 1, 1, 1),
             {"stride": (1, 1), "pad": (0, 0), "shift": 0, "relu": True})


def test_bad_clamp_is_refused():
    x = torch.zeros(1, 3, dtype=torch.int64)
    for bad in ((5, 3), (-128, 0), (0, 128), (0.5, 3)):
        with pytest.raises(EdgecError, match="clamp"):
            run1("relu", [("x", x, "i8")], (1, 3), {"clamp": bad})


def test_linear_clamp():
    g = torch.Generator().manual_seed(3)
    x, w, b = rint(g, (4, 12)), rint(g, (5, 12)), rint(g, (5,), -3000, 3000)
    for clamp in ((0, 127), (-50, 10)):
        exp = [[n_clamp(n_sat8(n_round(b[o].item() + sum(x[n, f].item() * w[o, f].item()
                                                         for f in range(12)), 7)), *clamp)
                for o in range(5)] for n in range(4)]
        got = run1("linear", [("x", x, "i8"), ("w", w, "i8"), ("b", b, "i32")], (4, 5),
                   {"shift": 7, "clamp": clamp})
        assert got.tolist() == exp


# ------------------------------------------------------------------ add

@pytest.mark.parametrize("sa,sb,shift,clamp", [
    (0, 0, 1, (-127, 127)), (0, 3, 2, (0, 127)), (4, 0, 5, (-60, 90)), (2, 2, 0, (-127, 127)),
    (0, 1, -1, (-127, 127)), (31, 0, 31, (-127, 127)), (0, 5, 6, (-3, 3))])
def test_add_nearest_matches_naive(sa, sb, shift, clamp):
    g = torch.Generator().manual_seed(sa * 40 + sb + 11)
    shp = (2, 3, 4, 5)
    a, b = rint(g, shp), rint(g, shp)
    a.view(-1)[:6] = torch.tensor([127, -127, 1, -1, 3, -3])
    b.view(-1)[:6] = torch.tensor([127, -127, 0, 0, 0, 0])
    got = run1("add", [("a", a, "i8"), ("b", b, "i8")], shp,
               {"sa": sa, "sb": sb, "shift": shift, "clamp": clamp, "grad": False})
    exp = [n_clamp(n_sat8(n_round(x * 2**sa + y * 2**sb, shift)), *clamp)
           for x, y in zip(a.view(-1).tolist(), b.view(-1).tolist())]
    assert got.view(-1).tolist() == exp


def test_add_nearest_ties_go_up():
    a = torch.tensor([[1, -1, 3, -3, 5, -5]])
    b = torch.zeros_like(a)
    got = run1("add", [("a", a, "i8"), ("b", b, "i8")], (1, 6),
               {"sa": 0, "sb": 0, "shift": 1, "clamp": (-127, 127), "grad": False})
    assert got.tolist() == [[1, 0, 2, -1, 3, -2]]


@pytest.mark.parametrize("sa,sb,shift,clamp", [
    (0, 0, 1, (-127, 127)), (0, 2, 3, (-127, 127)), (3, 0, 7, (-10, 20)), (0, 0, 0, (-127, 127)),
    (1, 0, -2, (-127, 127)), (0, 30, 31, (-127, 127))])
def test_add_stochastic_matches_naive(sa, sb, shift, clamp):
    g = torch.Generator().manual_seed(sa + 7 * sb + 5)
    shp = (2, 3, 5, 4)
    a, b = rint(g, shp), rint(g, shp)
    seed, tid = 0xC0FFEE11, 23
    got = run1("add", [("a", a, "i8"), ("b", b, "i8")], shp,
               {"sa": sa, "sb": sb, "shift": shift, "clamp": clamp, "grad": True, "tid": tid},
               seed=seed)
    exp = []
    for idx, (x, y) in enumerate(zip(a.view(-1).tolist(), b.view(-1).tolist())):
        v = x * 2**sa + y * 2**sb
        if shift > 0:
            r = n_rand32(seed, tid, idx)
            assert abs(v) < 2**45                 # float64 division below is exact
            q = math.floor((v + (r >> (32 - shift))) / 2**shift)
        else:
            q = v * 2**(-shift)
        exp.append(n_clamp(n_sat8(q), *clamp))
    assert got.view(-1).tolist() == exp
    if shift > 0:
        nearest = run1("add", [("a", a, "i8"), ("b", b, "i8")], shp,
                       {"sa": sa, "sb": sb, "shift": shift, "clamp": clamp, "grad": False})
        other = run1("add", [("a", a, "i8"), ("b", b, "i8")], shp,
                     {"sa": sa, "sb": sb, "shift": shift, "clamp": clamp, "grad": True,
                      "tid": tid + 1}, seed=seed)
        assert not torch.equal(got, nearest) and not torch.equal(got, other)


def test_add_rejects_bad_operands():
    a = torch.zeros(2, 3, dtype=torch.int64)
    with pytest.raises(EdgecError, match="sa"):
        run1("add", [("a", a, "i8"), ("b", a, "i8")], (2, 3),
             {"sa": 32, "sb": 0, "shift": 0, "clamp": (-127, 127), "grad": False})
    with pytest.raises(EdgecError, match="tid"):
        run1("add", [("a", a, "i8"), ("b", a, "i8")], (2, 3),
             {"sa": 0, "sb": 0, "shift": 1, "clamp": (-127, 127), "grad": True})


# ------------------------------------------------------------------ relu / hardtanh

def test_standalone_relu_and_hardtanh():
    x = torch.arange(-127, 128, dtype=torch.int64).reshape(1, 5, 51)
    xs = x.view(-1).tolist()
    got = run1("relu", [("x", x, "i8")], (1, 5, 51), {"clamp": (0, 127)})
    assert got.view(-1).tolist() == [max(v, 0) for v in xs]
    got = run1("relu", [("x", x, "i8")], (1, 5, 51), {})        # default (0, 127)
    assert got.view(-1).tolist() == [max(v, 0) for v in xs]
    for clamp in ((0, 96), (-64, 64), (-127, 127), (5, 5)):
        got = run1("hardtanh", [("x", x, "i8")], (1, 5, 51),
                   {"lo": -1.0, "hi": 1.0, "clamp": clamp})
        assert got.view(-1).tolist() == [min(max(v, clamp[0]), clamp[1]) for v in xs]
    with pytest.raises(EdgecError, match="clamp"):                # hardtanh needs clamp
        run1("hardtanh", [("x", x, "i8")], (1, 5, 51), {"lo": 0.0, "hi": 6.0})


def test_relu_bwd_pass_range_edges():
    y = torch.tensor([[-127, -1, 0, 1, 2, 126, 127]])
    dy = torch.tensor([[11, 12, 13, 14, 15, 16, -17]])
    got = run1("relu_bwd", [("dy", dy, "i8"), ("y", y, "i8")], (1, 7), {"pass_range": (0, 128)})
    assert got.tolist() == [[0, 0, 0, 14, 15, 16, -17]]          # y == 127 still passes
    got = run1("relu_bwd", [("dy", dy, "i8"), ("y", y, "i8")], (1, 7), {})   # default
    assert got.tolist() == [[0, 0, 0, 14, 15, 16, -17]]
    # brute force over every y and several ranges
    yy = torch.arange(-127, 128, dtype=torch.int64).reshape(1, -1)
    g = torch.Generator().manual_seed(4)
    dd = rint(g, tuple(yy.shape))
    for op, pr in (("relu_bwd", (0, 128)), ("hardtanh_bwd", (0, 96)),
                   ("hardtanh_bwd", (-64, 64)), ("hardtanh_bwd", (-127, 127)),
                   ("hardtanh_bwd", (3, 4))):
        attrs = {"pass_range": pr} if op == "relu_bwd" else {"lo": -1.0, "hi": 1.0,
                                                              "pass_range": pr}
        got = run1(op, [("dy", dd, "i8"), ("y", yy, "i8")], tuple(yy.shape), attrs)
        exp = [d if pr[0] < v < pr[1] else 0
               for d, v in zip(dd.view(-1).tolist(), yy.view(-1).tolist())]
        assert got.view(-1).tolist() == exp


def test_hardtanh_bwd_bounds_block():
    lo, hi = -20, 35
    y = torch.tensor([[lo - 1, lo, lo + 1, 0, hi - 1, hi, hi + 1]])
    dy = torch.tensor([[1, 2, 3, 4, 5, 6, 7]])
    got = run1("hardtanh_bwd", [("dy", dy, "i8"), ("y", y, "i8")], (1, 7),
               {"lo": -2.5, "hi": 4.375, "pass_range": (lo, hi)})
    assert got.tolist() == [[0, 0, 3, 4, 5, 0, 0]]
    with pytest.raises(EdgecError, match="pass_range"):
        run1("hardtanh_bwd", [("dy", dy, "i8"), ("y", y, "i8")], (1, 7),
             {"lo": -2.5, "hi": 4.375})


# ------------------------------------------------------------------ frozen parameters

def build_bn_graph():
    """x -> depthwise conv (frozen scale/shift, no master, no sgd) -> depthwise conv
    (trainable gamma/beta) with relu clamp -> add(x) -> relu; backward through both convs
    with a grad add; sgd on gamma and beta only."""
    N, C, H, W = 2, 4, 3, 3
    shp = (N, C, H, W)
    g = Graph()
    g.inputs = ["x", "labels", "dy"]          # dy: an error supplied from outside
    v = g.add_value
    v("x", shp, "i8", -5)
    v("labels", (N,), "i32", 0)
    v("dy", shp, "i8", -5)
    for name, kind, pshape, dt, tr in [("bn:scale", "bn_scale", (C, 1, 1, 1), "i8", False),
                                       ("bn:shift", "bn_shift", (C,), "i32", False),
                                       ("bn.weight", "weight", (C, 1, 1, 1), "i8", True),
                                       ("bn.bias", "bias", (C,), "i32", True)]:
        g.params[name] = Param(name, f"param:{name}", pshape, "bn", kind, trainable=tr)
        v(f"param:{name}", pshape, dt, -6)
        if tr:
            v(f"master:{name}", pshape, "i32", -22)
            v(f"new:{name}", pshape, dt, -6)
            v(f"newm:{name}", pshape, "i32", -22)
    for name in ("xhat", "y", "r", "dr", "dsum", "dxhat", "dx", "gg"):
        v(name, (C, 1, 1, 1) if name == "gg" else shp, "i8", -5)
    v("gb", (C,), "i8", -5)
    one = {"stride": (1, 1), "pad": (0, 0), "groups": C}
    a = g.add_node
    a("conv", ["x", "param:bn:scale", "param:bn:shift"], ["xhat"], dict(one, shift=5), "bn")
    a("conv", ["xhat", "param:bn.weight", "param:bn.bias"], ["y"],
      dict(one, shift=6, clamp=(0, 127)), "bn")
    a("add", ["y", "x"], ["r"], {"sa": 0, "sb": 1, "shift": 1, "clamp": (0, 127),
                                  "grad": False}, "res")
    a("relu_bwd", ["dy", "r"], ["dr"], {"pass_range": (0, 128)}, "res")
    a("add", ["dr", "dy"], ["dsum"], {"sa": 0, "sb": 0, "shift": 1, "clamp": (-127, 127),
                                       "grad": True, "tid": 1}, "res")
    a("conv_eb", ["dsum", "param:bn.weight"], ["dxhat"],
      dict(one, in_shape=shp, shift=4, tid=2), "bn")
    a("conv_eb", ["dxhat", "param:bn:scale"], ["dx"], dict(one, in_shape=shp, shift=4, tid=3),
      "bn")
    a("conv_wg", ["dsum", "xhat"], ["gg"], dict(one, kernel=(1, 1), shift=6, tid=4), "bn")
    a("bias_grad", ["dsum"], ["gb"], {"shift": 3, "tid": 5}, "bn")
    for pn, gv, cb in (("bn.weight", "gg", (16, 8)), ("bn.bias", "gb", (8, 24))):
        a("sgd", [f"param:{pn}", f"master:{pn}", gv], [f"new:{pn}", f"newm:{pn}"],
          {"lr": 0.1, "lrmul": 5000, "cshift": cb[0], "cbits": cb[1], "out_idx": None,
           "in_idx": None, "in_block": 1}, "bn")
    g.verify()
    return g


def test_frozen_params_need_no_master_or_sgd():
    g = build_bn_graph()
    gen = torch.Generator().manual_seed(12)
    C = 4
    ins = {"x": rint(gen, (2, C, 3, 3)), "labels": torch.zeros(2, dtype=torch.int64),
           "dy": rint(gen, (2, C, 3, 3)),
           "param:bn:scale": rint(gen, (C, 1, 1, 1)),
           "param:bn:shift": rint(gen, (C,), -2000, 2000),
           "master:bn.weight": rint(gen, (C, 1, 1, 1), -(127 << 16), 127 << 16),
           "master:bn.bias": rint(gen, (C,), -(2**20), 2**20)}
    ins["param:bn.weight"] = (ins["master:bn.weight"] + (1 << 15)) >> 16
    ins["param:bn.bias"] = (ins["master:bn.bias"] + (1 << 7)) >> 8
    assert "master:bn:scale" not in ins and "master:bn:shift" not in ins
    seed = 4321
    res = run_reference(g, ins, seed)
    assert set(res) == set(g.values)
    # independent per-element check of the forward (depthwise 1x1 = per-channel scale)
    X = ins["x"].tolist()
    s, t = ins["param:bn:scale"].view(-1).tolist(), ins["param:bn:shift"].tolist()
    gm, bt = ins["param:bn.weight"].view(-1).tolist(), ins["param:bn.bias"].tolist()
    for n in range(2):
        for c in range(C):
            for i in range(3):
                for j in range(3):
                    xh = n_sat8(n_round(X[n][c][i][j] * s[c] + t[c], 5))
                    y = n_clamp(n_sat8(n_round(xh * gm[c] + bt[c], 6)), 0, 127)
                    r = n_clamp(n_sat8(n_round(y + X[n][c][i][j] * 2, 1)), 0, 127)
                    assert res["xhat"][n, c, i, j].item() == xh
                    assert res["y"][n, c, i, j].item() == y
                    assert res["r"][n, c, i, j].item() == r
    # backward: grad add stochastic, depthwise eb/wg
    dr = [d if 0 < r < 128 else 0 for d, r in zip(ins["dy"].view(-1).tolist(),
                                                  res["r"].view(-1).tolist())]
    assert res["dr"].view(-1).tolist() == dr
    dsum = [n_sat8(n_round(a + b, 1, n_rand32(seed, 1, i)))
            for i, (a, b) in enumerate(zip(dr, ins["dy"].view(-1).tolist()))]
    assert res["dsum"].view(-1).tolist() == dsum
    ds = res["dsum"]
    eb = n_gconv_eb_acc(ds, ins["param:bn.weight"], (1, 1), (0, 0), (2, C, 3, 3), C)
    assert torch.equal(res["dxhat"], n_stoch_nested(eb, (2, C, 3, 3), 4, seed, 2))
    wg = n_gconv_wg_acc(ds, res["xhat"], (1, 1), (0, 0), (1, 1), C)
    assert torch.equal(res["gg"], n_stoch_nested(wg, (C, 1, 1, 1), 6, seed, 4))
    # the frozen parameters pass through untouched; the trainable ones moved
    assert not torch.equal(res["newm:bn.weight"], ins["master:bn.weight"])
    assert torch.equal(res["param:bn:scale"], ins["param:bn:scale"])
    # a missing master of a trainable parameter is still a clear error
    bad = dict(ins)
    del bad["master:bn.bias"]
    with pytest.raises(EdgecError, match="master:bn.bias"):
        run_reference(g, bad, 0)


# ------------------------------------------------------------------ channel plumbing, gates

def test_concat_and_slice_move_channels_only():
    g = torch.Generator().manual_seed(11)
    a, b = rint(g, (2, 3, 2, 2)), rint(g, (2, 1, 2, 2))
    got = run1("concat", [("a", a, "i8"), ("b", b, "i8")], (2, 4, 2, 2),
               {"grad": False, "sizes": [3, 1]})
    for n in range(2):
        for c in range(4):
            want = a[n, c] if c < 3 else b[n, c - 3]
            assert got[n, c].tolist() == want.tolist()
    got = run1("slice", [("a", a, "i8")], (2, 2, 2, 2),
               {"grad": False, "start": 1, "stop": 3, "c0": 1, "c1": 3})
    assert got.tolist() == [[a[n, 1].tolist(), a[n, 2].tolist()] for n in range(2)]


@pytest.mark.parametrize("grad,shift", [(False, 6), (False, -1), (True, 7), (True, 0)])
def test_chmul_is_a_rounded_per_channel_product(grad, shift):
    g = torch.Generator().manual_seed(12 + shift)
    x, s = rint(g, (2, 3, 2, 3)), rint(g, (2, 3, 1, 1))
    x[0, 0, 0, 0], s[0, 0, 0, 0] = -127, -127
    seed, tid = 0x2468ACE, 5
    got = run1("chmul", [("x", x, "i8"), ("s", s, "i8")], (2, 3, 2, 3),
               {"grad": grad, "shift": shift, "tid": tid, "clamp": (-127, 127)}, seed=seed)
    X, S = x.tolist(), s.tolist()
    for idx, (n, c, i, j) in enumerate((n, c, i, j) for n in range(2) for c in range(3)
                                       for i in range(2) for j in range(3)):
        v = X[n][c][i][j] * S[n][c][0][0]
        r = n_rand32(seed, tid, idx) if grad else None
        assert int(got[n, c, i, j]) == n_sat8(n_round(v, shift, r)), (n, c, i, j)


def test_chmul_ds_sums_products_over_the_plane():
    g = torch.Generator().manual_seed(13)
    dy, x = rint(g, (2, 3, 3, 2)), rint(g, (2, 3, 3, 2))
    seed, tid, shift = 77, 9, 5
    got = run1("chmul_ds", [("dy", dy, "i8"), ("x", x, "i8")], (2, 3, 1, 1),
               {"shift": shift, "tid": tid}, seed=seed)
    D, X = dy.tolist(), x.tolist()
    for n in range(2):
        for c in range(3):
            v = sum(D[n][c][i][j] * X[n][c][i][j] for i in range(3) for j in range(2))
            want = n_sat8(n_round(v, shift, n_rand32(seed, tid, n * 3 + c)))
            assert int(got[n, c, 0, 0]) == want, (n, c)
