"""Every MAC path (pointwise, window, EB taps of Q, by taps; float32, float32 chunks,
float64, int64) on random tiles with edge geometries -- negative and positive base offsets,
strides up to 3, tiles smaller than the kernel's reach, groups, several images, acc=0/1 --
against an int64 reference written here tap by tap from the convolution's definition."""
import numpy as np
import pytest

import edgec.runtime_emu.mac as emu_mac
from edgec.runtime_emu.state import Trap

from test_emu_util import TARGET


@pytest.fixture(params=["float32", "float32-chunks", "float64", "int64", "by-taps"])
def exact_path(request, monkeypatch):
    """float32-chunks: float32 sums of at most 3 products, chunks added in float64."""
    if request.param == "float32-chunks":
        monkeypatch.setattr(emu_mac, "_EXACT_F32", 3 * 128 * 128 + 1)
    if request.param in ("float64", "int64"):
        monkeypatch.setattr(emu_mac, "_EXACT_F32", 0)
    if request.param == "int64":
        monkeypatch.setattr(emu_mac, "_EXACT_F64", 0)
    if request.param == "by-taps":
        monkeypatch.setattr(emu_mac, "_WINDOW_MAX", 0)
    return request.param


class _Machine:
    """What op_mac touches of a machine."""

    def __init__(self, A, B, C):
        self.bufs = {"IBUF": A.reshape(-1).copy(), "WBUF": B.reshape(-1).copy(),
                     "ABUF": C.reshape(-1).astype(np.int32)}
        self.counters = {"macs": 0}
        self.target = TARGET


def _fields(pat, g, base_h, base_w, acc):
    """MAC fields with tile-local base offsets base_h = yh0*sh - ph - xh0 (base_w alike)."""
    f = dict(pattern=("FP", "EB", "WG").index(pat), acc=acc, abuf=0, aaddr=0, bbuf=1,
             baddr=0, caddr=0, **g)
    for ax, base in (("h", base_h), ("w", base_w)):
        s = g["s" + ax]
        f["y" + ax + "0"], f["x" + ax + "0"], f["p" + ax] = (
            (base, base * (s - 1), 0) if base >= 0 else (0, 0, -base))
    return f


def _taps(g, base_h, base_w):
    """Per tap (kh, kw): the X tile rows/columns that Y rows/columns read (-1: outside)."""
    for kh in range(g["kh"]):
        r = base_h + kh + g["sh"] * np.arange(g["yh"])
        r = np.where((r >= 0) & (r < g["xh"]), r, -1)
        for kw in range(g["kw"]):
            q = base_w + kw + g["sw"] * np.arange(g["yw"])
            yield kh, kw, r, np.where((q >= 0) & (q < g["xw"]), q, -1)


def _reference(pat, g, X, W, dY, base_h, base_w):
    """int64 FP Y, EB dX or WG dW of tiles X [n, G*ci, xh, xw], W [G*co, ci, kh, kw],
    dY [n, G*co, yh, yw]; X elements outside the tile read (and EB drops them as) 0."""
    n, G, ci, co = g["n"], g["g"], g["ci"], g["co"]
    X = np.pad(X.astype(np.int64), [(0, 0), (0, 0), (0, 1), (0, 1)])    # index -1 -> 0
    W = W.astype(np.int64).reshape(G, co, ci, g["kh"], g["kw"])
    dY = dY.astype(np.int64).reshape(n, G, co, g["yh"], g["yw"])
    out = {"FP": np.zeros((n, G, co, g["yh"], g["yw"]), np.int64),
           "EB": np.zeros((n, G, ci, g["xh"] + 1, g["xw"] + 1), np.int64),
           "WG": np.zeros(W.shape, np.int64)}[pat]
    for kh, kw, r, q in _taps(g, base_h, base_w):
        x = X[:, :, r][:, :, :, q].reshape(n, G, ci, g["yh"], g["yw"])
        w = W[:, :, :, kh, kw]
        if pat == "FP":
            out += np.einsum("goc,ngcyx->ngoyx", w, x)
        elif pat == "EB":
            contrib = np.einsum("goc,ngoyx->ngcyx", w, dY)
            for i, rr in enumerate(r):
                for j, qq in enumerate(q):
                    out[:, :, :, rr, qq] += contrib[:, :, :, i, j]
        else:
            out[:, :, :, kh, kw] = np.einsum("ngoyx,ngcyx->goc", dY, x)
    if pat == "EB":
        out = out[:, :, :, :-1, :-1]
    return out.reshape(-1)


def _random_geometry(rng, pointwise=False):
    if pointwise:
        h, w = rng.integers(1, 6, 2)
        return dict(n=rng.integers(1, 4), g=rng.integers(1, 5), ci=1, co=1, kh=1, kw=1,
                    sh=1, sw=1, xh=h, xw=w, yh=h, yw=w), 0, 0
    g = dict(n=rng.integers(1, 4), g=rng.integers(1, 4), ci=rng.integers(1, 5),
             co=rng.integers(1, 5), kh=rng.choice([1, 2, 3, 5]), kw=rng.choice([1, 2, 3]),
             sh=rng.integers(1, 4), sw=rng.integers(1, 3), xh=rng.integers(1, 8),
             xw=rng.integers(1, 8), yh=rng.integers(1, 6), yw=rng.integers(1, 6))
    return {k: int(v) for k, v in g.items()}, int(rng.integers(-4, 3)), int(rng.integers(-3, 3))


def _case(pat, g, base_h, base_w, rng):
    """Random int8 A and B tiles and the int64 reference of their MAC."""
    n, G, ci, co = g["n"], g["g"], g["ci"], g["co"]
    X = rng.integers(-128, 128, (n, G * ci, g["xh"], g["xw"])).astype(np.int8)
    W = rng.integers(-128, 128, (G * co, ci, g["kh"], g["kw"])).astype(np.int8)
    dY = rng.integers(-128, 128, (n, G * co, g["yh"], g["yw"])).astype(np.int8)
    A, B = {"FP": (X, W), "EB": (dY, W), "WG": (dY, X)}[pat]
    return A, B, _reference(pat, g, X, W, dY, base_h, base_w)


def _mac(pat, g, base_h, base_w, acc, A, B, C):
    """The C tile after the MAC (ABUF starting as C)."""
    m = _Machine(A, B, C)
    emu_mac.op_mac(m, _fields(pat, g, base_h, base_w, acc))
    return m.bufs["ABUF"][:C.size]


@pytest.mark.parametrize("pat", ["FP", "EB", "WG"])
@pytest.mark.parametrize("pointwise", [False, True])
def test_paths_match_reference(pat, pointwise, exact_path):
    rng = np.random.default_rng(("FP", "EB", "WG").index(pat) + 10 * pointwise)
    for case in range(40):
        g, base_h, base_w = _random_geometry(rng, pointwise)
        A, B, ref = _case(pat, g, base_h, base_w, rng)
        C = rng.integers(-2**20, 2**20, ref.size)
        acc = case % 2
        np.testing.assert_array_equal(_mac(pat, g, base_h, base_w, acc, A, B, C),
                                      ref + C if acc else ref,
                                      err_msg=f"{pat} {g} base {base_h, base_w} acc {acc}")


@pytest.mark.parametrize("pat", ["FP", "EB", "WG"])
def test_resnet_like_tiles(pat, exact_path):
    """3x3 pad 1 tiles at strides 1 and 2 with halos, several images and channels."""
    rng = np.random.default_rng(7)
    for sh, yh, xh, base in [(1, 4, 4, -1), (1, 4, 6, 0), (2, 4, 8, -1), (2, 3, 8, 1)]:
        g = dict(n=2, g=1, ci=5, co=6, kh=3, kw=3, sh=sh, sw=sh, xh=xh, xw=xh, yh=yh, yw=yh)
        A, B, ref = _case(pat, g, base, base, rng)
        np.testing.assert_array_equal(_mac(pat, g, base, base, 0, A, B, 0 * ref), ref,
                                      err_msg=f"{pat} {g} base {base}")


@pytest.mark.parametrize("pat", ["FP", "EB", "WG"])
@pytest.mark.parametrize("pointwise", [False, True])
def test_overflow_trap_names_the_first_element(pat, pointwise, exact_path):
    rng = np.random.default_rng(3)
    k = 1 if pointwise else 3
    g = dict(n=2, g=2, ci=1 if pointwise else 4, co=1 if pointwise else 4, kh=k, kw=k,
             sh=1, sw=1, xh=5, xw=5, yh=5, yw=5)
    base = 0 if pointwise else -1
    A, B, ref = _case(pat, g, base, base, rng)
    C = np.where(rng.random(ref.size) < 0.5, 2**31 - 1, -(2**31 - 1))
    total = ref + C
    bad = int(np.flatnonzero(np.abs(total) > 2**31 - 1)[0])
    with pytest.raises(Trap) as e:
        _mac(pat, g, base, base, 1, A, B, C)
    el = list(np.unravel_index(bad, emu_mac._plan(emu_mac._key(
        _fields(pat, g, base, base, 1))).c_shape))
    assert str(e.value).startswith(f"accumulator overflow: C{[int(i) for i in el]} = "
                                   f"{int(total[bad])} leaves int32")
    assert str(e.value).endswith(f"(pattern {pat}, acc=1, ABUF {bad})")
