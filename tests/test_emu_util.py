"""Shared helpers for the emulator tests: hand-built programs and pure-Python references."""
from __future__ import annotations

import numpy as np

from edgec.isa.container import Program, read_program, write_program
from edgec.isa.encoding import encode
from edgec.isa.target import load_target
from edgec.runtime_emu.machine import Machine

TARGET = load_target()
IBUF, WBUF, ABUF = 0, 1, 2


class DDR:
    """Tiny DDR image builder: put arrays at aligned addresses, remember where."""

    def __init__(self, size: int = 1 << 16):
        self.size = size
        self.img = bytearray()
        self.symbols: list[dict] = []

    def put(self, arr, dtype="i8", name=None, exp=0, shape=None) -> int:
        arr = np.asarray(arr)
        while len(self.img) % 16:
            self.img.append(0)
        addr = len(self.img)
        self.img += arr.astype("<i1" if dtype == "i8" else "<i4").tobytes()
        if name is not None:
            self.symbols.append({"name": name, "kind": "tensor", "addr": addr,
                                 "shape": list(arr.shape if shape is None else shape),
                                 "dtype": dtype, "exp": exp})
        return addr

    def reserve(self, nbytes: int, name=None, shape=None, dtype="i8", exp=0) -> int:
        n = nbytes
        z = np.zeros(n if dtype == "i8" else n // 4)
        return self.put(z, dtype, name, exp, shape)


def build(instrs, ddr: DDR | None = None, meta=None, target=TARGET, end=True) -> Program:
    ddr = ddr or DDR()
    words = [encode(name, **fields) for name, fields in instrs]
    if end:
        words.append(encode("END"))
    p = Program(target.fingerprint, b"".join(words), bytes(ddr.img), ddr.size,
                ddr.symbols, meta or {})
    return read_program(write_program(p))


def run(instrs, ddr: DDR | None = None, target=TARGET, **kw) -> Machine:
    m = Machine(build(instrs, ddr, target=target, **kw), target)
    m.run()
    return m


def ddr_read(m, addr, shape, dtype="i8"):
    dt = np.dtype("<i1" if dtype == "i8" else "<i4")
    n = int(np.prod(shape)) * dt.itemsize
    return m.ddr[addr:addr + n].view(dt).reshape(shape).astype(np.int64)


def ld(buf, baddr, ddr, shape, strides, esize=1, **kw):
    f = dict(buf=buf, baddr=baddr, ddr=ddr, esize=esize,
             n0=shape[0], n1=shape[1], n2=shape[2], n3=shape[3],
             s0=strides[0], s1=strides[1], s2=strides[2], s3=strides[3])
    f.update(kw)
    return f


def dense_strides(shape):
    st, acc = [], 1
    for d in reversed(shape):
        st.append(acc)
        acc *= d
    return tuple(reversed(st))


# ---------------------------------------------------------------- pure-Python references
def rand32_py(seed, tid, idx):
    M = 0xFFFFFFFF
    h = (seed * 0x9E3779B1 + tid * 0x85EBCA77 + idx * 0xC2B2AE3D) & M
    h ^= h >> 16
    h = (h * 0x7FEB352D) & M
    h ^= h >> 15
    h = (h * 0x846CA68B) & M
    h ^= h >> 16
    return h


def rshift_py(v, s, mode, r=0):
    if s <= 0:
        return v * 2 ** (-s)
    if mode == "nearest":
        return (v + 2 ** (s - 1)) // 2 ** s
    return (v + (r >> (32 - s))) // 2 ** s


def sat_py(v, bits=8):
    hi = 2 ** (bits - 1) - 1
    return min(max(v, -hi), hi)


def conv_fwd_py(X, W, sh, sw, ph, pw):
    N, C, H, Wd = X.shape
    O, _, KH, KW = W.shape
    OH, OW = (H + 2 * ph - KH) // sh + 1, (Wd + 2 * pw - KW) // sw + 1
    Y = np.zeros((N, O, OH, OW), dtype=np.int64)
    for n in range(N):
        for o in range(O):
            for y in range(OH):
                for x in range(OW):
                    s = 0
                    for c in range(C):
                        for i in range(KH):
                            for j in range(KW):
                                r, q = y * sh - ph + i, x * sw - pw + j
                                if 0 <= r < H and 0 <= q < Wd:
                                    s += int(X[n, c, r, q]) * int(W[o, c, i, j])
                    Y[n, o, y, x] = s
    return Y


def conv_eb_py(dY, W, H, Wd, sh, sw, ph, pw):
    N, O, OH, OW = dY.shape
    _, C, KH, KW = W.shape
    dX = np.zeros((N, C, H, Wd), dtype=np.int64)
    for n in range(N):
        for o in range(O):
            for y in range(OH):
                for x in range(OW):
                    for c in range(C):
                        for i in range(KH):
                            for j in range(KW):
                                r, q = y * sh - ph + i, x * sw - pw + j
                                if 0 <= r < H and 0 <= q < Wd:
                                    dX[n, c, r, q] += int(dY[n, o, y, x]) * int(W[o, c, i, j])
    return dX


def conv_wg_py(dY, X, KH, KW, sh, sw, ph, pw):
    N, O, OH, OW = dY.shape
    _, C, H, Wd = X.shape
    dW = np.zeros((O, C, KH, KW), dtype=np.int64)
    for o in range(O):
        for c in range(C):
            for i in range(KH):
                for j in range(KW):
                    s = 0
                    for n in range(N):
                        for y in range(OH):
                            for x in range(OW):
                                r, q = y * sh - ph + i, x * sw - pw + j
                                if 0 <= r < H and 0 <= q < Wd:
                                    s += int(dY[n, o, y, x]) * int(X[n, c, r, q])
                    dW[o, c, i, j] = s
    return dW
