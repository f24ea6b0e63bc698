"""Translation blocks: the program's straight-line code lifted, once, into dataflow blocks
that run as a few whole-array operations instead of one numpy call per instruction.

`translate(machine)` (cached per code digest, `cached`) splits the code into blocks and
runs the timing model over it once; `blockexec.py` executes a block; `fastrun.py` is the
run loop.  A block is a maximal run of LD, LDCH, ST, STCH, MAC, RQ, SGD and SYNC words
for which the translation PROVES, from the instruction words alone, that executing its
dataflow graph gives the interpreter's state:

* every buffer read names exactly one earlier write of the block (the whole range that
  one instruction wrote, not overwritten since), or a range no instruction of the block
  wrote before (its value at block entry); a read of a partly overwritten range ends the
  block.  The graph's values are these ranges (SSA): a buffer address reused by double
  buffering is a new value;
* an LD reads no DDR byte that an earlier ST of the block wrote (checked on the boxes'
  byte extents), so every load can run before every store; stores run in program order.
  The rows of LDCH/STCH come from index tables in DDR: the tables must not be stored
  earlier in the block, and the executor checks the data's extents at run time;
* LD and ST words take the DMA fast path (no fault possible, ST boxes injective), LDCH and
  STCH pass every check that does not read their tables; MAC,
  RQ and SGD words name operands that fit their buffers; SGD has no momentum; no LD
  writes XBUF;
* no exponent-table word an instruction reads (RQ/SGD dyn, dcl) was written earlier in
  the block (only the statistics pairs st=1 are written, in program order at commit), and
  statistics pairs of different words are equal or disjoint.
A MAC chain (acc=1 onto the previous MAC of the same C tile) becomes one value: its
members are grouped by tile geometry, concatenated along the summed axis (FP: input
channels, EB: output channels, WG: images) and run through the emulator's own MAC
kernel (mac.product), the groups' exact integer results added in int64.  At run time
the executor checks what the words alone cannot prove: max|C0| + sum of the members'
terms * 2**14 <= 2**31 - 1 (no partial sum can leave int32), the shifts and clamp bounds
that RQ and SGD take from the exponent table.  A failed check leaves the machine
untouched and the block is interpreted, so traps, their index and message are the
interpreter's.  Counters and cycles do not depend on data: the timing model runs once
per program here (`Translation.cycles`), blocks add their fixed counts.
"""
from __future__ import annotations

import bisect
import gc
import hashlib
from typing import NamedTuple

import numpy as np

from edgec.isa.machine import mac_count
from edgec.isa.table import BUFFERS, INSTRS, XBUF_WORDS
from edgec.isa.timeline import Timeline

from .dma import _DT, _ESIZE, _fast_box
from .mac import _key, _plan

MIN_BLOCK = 6                 # shorter runs are interpreted (a block costs ~50 us to enter)
_NAMES = tuple(i.name for i in INSTRS)
_INDEX = {n: k for k, n in enumerate(_NAMES)}


class Op:
    """One node of a block's dataflow graph: kind "ld", "live", "mac", "rq" or "sgd"."""
    __slots__ = ("kind", "deps", "info", "outs", "level", "dead", "plan")

    def __init__(self, kind, deps, info):
        self.kind, self.deps, self.info = kind, deps, info
        self.outs: list = []
        self.level = 0
        self.dead = False
        self.plan = None


class Val:
    """The contents of one buffer range written by one op (its output `k`)."""
    __slots__ = ("op", "k", "n", "idx", "read")

    def __init__(self, op: Op, k: int, n: int):
        self.op, self.k, self.n = op, k, n
        self.idx = -1
        self.read = False
        op.outs.append(self)


_GATHER_KEY = ("ddr", "esize", "n0", "n1", "n2", "n3", "s0", "s1", "s2", "s3", "gather",
               "tab0", "tab1")


class Dyn(NamedTuple):
    """An access-log entry known at run time: of the LDCH op, or of the k-th store."""
    ref: object


class Block(NamedTuple):
    start: int
    stop: int
    levels: list          # [[(kind, [ops])]] in dependency order
    nvals: int
    stores: list          # (pc, ddr, shape, strides, dtype, Val) in program order
    segs: list            # (buf, lo, hi, Val, offset): the buffer contents at exit
    stats: list           # (op, xs) of st=1 words in program order
    log_r: list           # access-log entries, as the interpreter records them
    log_w: list
    macs: int
    rbytes: int
    wbytes: int
    events: list          # (write?, lo, hi, ref): DMA extents, ref an LDCH op / store index
    dynamic: bool         # gathered words: `events` checked at run time


class _Extents:
    """Union of DDR byte intervals (sorted, merged)."""

    def __init__(self):
        self.lo: list[int] = []
        self.hi: list[int] = []

    def overlaps(self, a: int, b: int) -> bool:
        i = bisect.bisect_right(self.lo, a) - 1
        if i >= 0 and self.hi[i] > a:
            return True
        return i + 1 < len(self.lo) and self.lo[i + 1] < b

    def add(self, a: int, b: int) -> None:
        i = bisect.bisect_left(self.hi, a)          # first interval ending at or after a
        j = bisect.bisect_right(self.lo, b)         # intervals [i, j) touch [a, b)
        if i < j:
            a, b = min(a, self.lo[i]), max(b, self.hi[j - 1])
        self.lo[i:j], self.hi[i:j] = [a], [b]


class _Builder:
    """Symbolic execution of one block: buffer ranges -> values."""

    def __init__(self, m, start: int):
        self.m, self.start = m, start
        self.seg = {b: ([], []) for b in BUFFERS}     # buf -> (starts, [lo, hi, Val, off])
        self.ops: list[Op] = []
        self.ld_cse: dict = {}
        self.written = _Extents()
        self.xw: set[int] = set()                     # XBUF words written (stats)
        self.xpairs: set[int] = set()
        self.stores, self.stats, self.log_r, self.log_w = [], [], [], []
        self.macs = self.rbytes = self.wbytes = 0
        self.heavy = 0                                # MAC / RQ / SGD words
        self.events: list = []      # DMA extents in program order (write?, lo, hi, ref)
        self.dynamic = False        # a gathered word: run-time checks of `events`

    # ---- buffer ranges
    def _over(self, buf, a, b):
        starts, segs = self.seg[buf]
        i = max(bisect.bisect_right(starts, a) - 1, 0)
        j = i
        while j < len(segs) and segs[j][0] < b:
            j += 1
        while i < j and segs[i][1] <= a:
            i += 1
        return i, j

    def read(self, buf: str, a: int, n: int):
        """The value of [a, a+n) of buf, or None (a partly overwritten range)."""
        i, j = self._over(buf, a, a + n)
        if i == j:
            op = self._op("live", [], (buf, a))
            return Val(op, 0, n)
        lo, hi, v, off = self.seg[buf][1][i]
        if j == i + 1 and lo == a and hi == a + n and off == 0 and v.n == n:
            return v
        return None

    def write(self, buf: str, a: int, v: Val) -> None:
        b = a + v.n
        starts, segs = self.seg[buf]
        i, j = self._over(buf, a, b)
        new = []
        if i < j and segs[i][0] < a:
            lo, hi, w, off = segs[i]
            new.append((lo, a, w, off))
        new.append((a, b, v, 0))
        if i < j and segs[j - 1][1] > b:
            lo, hi, w, off = segs[j - 1]
            new.append((b, hi, w, off + b - lo))
        segs[i:j] = new
        starts[i:j] = [s[0] for s in new]

    def _op(self, kind, deps, info) -> Op:
        op = Op(kind, deps, info)
        self.ops.append(op)
        return op

    def _xread(self, *words) -> bool:
        return not any(w in self.xw for w in words) and all(0 <= w < XBUF_WORDS
                                                             for w in words)

    def _xstats_ok(self, f) -> bool:
        """st=1: the pair fits XBUF and is equal to or disjoint from the block's others."""
        if not f["st"]:
            return True
        xs = f["xs"]
        if not 0 <= xs <= XBUF_WORDS - 2:
            return False
        return xs in self.xpairs or not (xs in self.xw or xs + 1 in self.xw)

    def _xstats(self, op, f) -> None:
        if f["st"]:
            xs = f["xs"]
            self.xpairs.add(xs)
            self.xw.update((xs, xs + 1))
            self.stats.append((op, xs))

    def _fits(self, buf: str, a: int, n: int) -> bool:
        return n > 0 and a + n <= self.m.bufs[buf].size

    # ---- instructions (each checks everything before it changes the builder)
    def add(self, pc: int) -> bool:
        ins, f = self.m.instrs[pc]
        fn = getattr(self, "_" + ins.name, None)
        return fn is not None and fn(pc, f)

    def _SYNC(self, pc, f):
        return True

    def _LD(self, pc, f):
        fast = _fast_box(self.m, f)
        if fast is None or fast[1] == "XBUF":
            return False
        p, buf = fast
        a = f["ddr"]
        if self.written.overlaps(a, a + p.extent):
            return False                              # reads what the block stored
        key = (a, f["esize"], p.shape, p.strides)
        op = self.ld_cse.get(key)
        if op is None:
            op = self.ld_cse[key] = self._op("ld", [], (a, p.shape, p.strides,
                                                         _DT[f["esize"]]))
            Val(op, 0, p.count)
        self.write(buf, f["baddr"], op.outs[0])
        self.events.append((False, a, a + p.extent, None))
        self.log_r.append((a, p.byte_shape, p.byte_strides))
        self.rbytes += p.count * f["esize"]
        return True

    def _ST(self, pc, f):
        fast = _fast_box(self.m, f)
        if fast is None or fast[1] == "XBUF" or not fast[0].injective:
            return False
        p, buf = fast
        v = self.read(buf, f["baddr"], p.count)
        if v is None:
            return False
        v.read = True
        a = f["ddr"]
        self.written.add(a, a + p.extent)
        self.events.append((True, a, a + p.extent, None))
        self.stores.append((pc, a, p.shape, p.strides, _DT[f["esize"]], v))
        self.log_w.append((pc, a, p.byte_shape, p.byte_strides))
        self.wbytes += p.count * f["esize"]
        return True

    def _gathered(self, pc, f):
        """(plan-like (buffer, count, tables)) of an LDCH/STCH word none of whose static
        checks can fail, or None; the tables' bytes must not have been stored earlier
        in the block."""
        b = f["buf"]
        if b > 2 or not 1 <= f["gather"] <= 3 or f["esize"] != _ESIZE[BUFFERS[b]]:
            return None
        ns = [f[k] for k in ("n0", "n1", "n2", "n3")]
        count = ns[0] * ns[1] * ns[2] * ns[3]
        if not self._fits(BUFFERS[b], f["baddr"], count) or 0 in ns:
            return None
        tabs = []
        for d in (0, 1):
            if f["gather"] >> d & 1:
                t, n = f[f"tab{d}"], 4 * ns[d]
                if t + n > self.m.ddr.size or self.written.overlaps(t, t + n):
                    return None
                tabs.append((t, n))
        return BUFFERS[b], count, tabs

    def _tables(self, tabs) -> None:
        for t, n in tabs:
            self.log_r.append((t, (n,), (1,)))
            self.events.append((False, t, t + n, None))
            self.rbytes += n

    def _LDCH(self, pc, f):
        g = self._gathered(pc, f)
        if g is None:
            return False
        buf, count, tabs = g
        key = ("ch", tuple(f[k] for k in _GATHER_KEY))
        op = self.ld_cse.get(key)
        if op is None:
            op = self.ld_cse[key] = self._op("ldch", [], (f, _DT[f["esize"]]))
            Val(op, 0, count)
        self._tables(tabs)
        self.log_r.append(Dyn(op))
        self.events.append((False, 0, 0, op))
        self.write(buf, f["baddr"], op.outs[0])
        self.rbytes += count * f["esize"]
        self.dynamic = True
        return True

    def _STCH(self, pc, f):
        g = self._gathered(pc, f)
        if g is None:
            return False
        buf, count, tabs = g
        v = self.read(buf, f["baddr"], count)
        if v is None:
            return False
        v.read = True
        self._tables(tabs)
        k = len(self.stores)
        self.stores.append((pc, None, f, None, _DT[f["esize"]], v))
        self.log_w.append(Dyn(k))
        self.events.append((True, 0, 0, k))
        self.wbytes += count * f["esize"]
        self.dynamic = True
        return True

    def _MAC(self, pc, f):
        key = _key(f)
        p = _plan(key)
        ab, bb = f["abuf"], f["bbuf"]
        if (p is None or ab > 1 or bb > 1 or not self._fits("ABUF", f["caddr"], p.c_n)
                or not self._fits(BUFFERS[ab], f["aaddr"], p.a_n)
                or not self._fits(BUFFERS[bb], f["baddr"], p.b_n)):
            return False
        A = self.read(BUFFERS[ab], f["aaddr"], p.a_n)
        B = self.read(BUFFERS[bb], f["baddr"], p.b_n)
        C = self.read("ABUF", f["caddr"], p.c_n) if f["acc"] else None
        if A is None or B is None or (f["acc"] and C is None):
            return False
        A.read = B.read = True
        member = (f, A, B)
        if C is not None and C.op.kind == "mac" and not C.read:
            init, members = C.op.info
            C.op.dead = True
            op = self._op("mac", C.op.deps + [A.op, B.op], (init, members + [member]))
        else:
            if C is not None:
                C.read = True
            op = self._op("mac", ([C.op] if C is not None else []) + [A.op, B.op],
                          (C, [member]))
        self.write("ABUF", f["caddr"], Val(op, 0, p.c_n))
        self.macs += mac_count(f)
        self.heavy += 1
        return True

    def _RQ(self, pc, f):
        n = f["n0"] * f["n1"] * f["n2"] * f["n3"]
        d = f["dbuf"]
        if d > 2 or not self._fits("ABUF", f["saddr"], n) or \
                not self._fits(BUFFERS[d], f["daddr"], n) or f["mode"] > 1:
            return False
        words = [f[k] for k in ("xo", "xa", "xb")] if f["dyn"] else []
        if f["dcl"]:
            words.append(f["xo"])
        if not self._xread(*words) or not self._xstats_ok(f):
            return False
        src = self.read("ABUF", f["saddr"], n)
        if src is None:
            return False
        src.read = True
        op = self._op("rq", [src.op], (f, src))
        self._xstats(op, f)
        self.write(BUFFERS[d], f["daddr"], Val(op, 0, n))
        self.heavy += 1
        return True

    def _SGD(self, pc, f):
        c, d, g = f["count"], f["dbuf"], f["gbuf"]
        if (f["mom"] or d > 2 or g > 2 or not self._fits("ABUF", f["maddr"], c)
                or not self._fits(BUFFERS[d], f["daddr"], c)
                or not (f["ng"] or self._fits(BUFFERS[g], f["gaddr"], c))
                or not (f["cbits"] <= 8 or BUFFERS[d] == "ABUF")
                or (BUFFERS[d] == "ABUF" and f["daddr"] < f["maddr"] + c
                    and f["maddr"] < f["daddr"] + c)):
            return False
        if not self._xread(*([f["xg"], f["xc"], f["xd"]] if f["dyn"] else [])) or \
                not self._xstats_ok(f):
            return False
        M = self.read("ABUF", f["maddr"], c)
        G = None if f["ng"] else self.read(BUFFERS[g], f["gaddr"], c)
        if M is None or (G is None and not f["ng"]):
            return False
        M.read = True
        if G is not None:
            G.read = True
        op = self._op("sgd", [M.op] + ([G.op] if G is not None else []), (f, M, G))
        self._xstats(op, f)
        copy, master = Val(op, 0, c), Val(op, 1, c)
        self.write(BUFFERS[d], f["daddr"], copy)
        self.write("ABUF", f["maddr"], master)
        self.heavy += 1
        return True

    # ---- the block
    def finish(self, stop: int) -> Block:
        ops = [op for op in self.ops if not op.dead]
        vals = 0
        levels: dict[int, dict[str, list]] = {}
        for op in ops:
            op.level = 1 + max((d.level for d in op.deps), default=-1)
            levels.setdefault(op.level, {}).setdefault(op.kind, []).append(op)
            for v in op.outs:
                v.idx = vals
                vals += 1
        segs = [(buf, lo, hi, v, off) for buf, (_, ss) in self.seg.items()
                for lo, hi, v, off in ss]
        return Block(self.start, stop, [list(levels[k].items()) for k in sorted(levels)],
                     vals, self.stores, segs, self.stats, self.log_r, self.log_w,
                     self.macs, self.rbytes, self.wbytes, self.events, self.dynamic)


class Translation(NamedTuple):
    plan: list            # (start, stop, Block | None) covering [0, limit)
    limit: int            # first word the translated run does not reach: END + 1, the
                          # first word the timing model refuses, or the code's length
    cycles: np.ndarray    # int64 [limit, 4]: cycles, cycles_dma, _mac, _vector after word i
    opcodes: np.ndarray   # int16 [n]: index into _NAMES of every word
    timeline: Timeline    # the timing model after word limit - 1
    lifted: int           # words inside blocks


def _timing(m) -> tuple[np.ndarray, int, Timeline]:
    """The timing model over the code in program order, up to END or the first word it
    refuses (a TokenError or a malformed word: the interpreter then traps there)."""
    tl = Timeline(m.target.ddr_latency)
    c, tg = tl.c, m.target
    out = []
    limit = len(m.instrs)
    for i, (ins, f) in enumerate(m.instrs):
        try:
            tl.issue(ins.name, f["dep"], ins.cycles(f, tg))
        except Exception:     # noqa: BLE001 - TokenError, FieldError, ...: the
            # interpreter reaches this word with the timing model replayed and decides
            limit = i
            break
        out.append((c["cycles"], c["cycles_dma"], c["cycles_mac"], c["cycles_vector"]))
        if ins.barrier:
            limit = i + 1
            break
    return np.array(out, dtype=np.int64).reshape(-1, 4), limit, tl


def translate(m) -> Translation:
    """Split the machine's code into blocks (see the module docstring)."""
    enabled = gc.isenabled()
    gc.disable()              # tens of thousands of small linked objects: no cycles to find
    try:
        return _translate(m)
    finally:
        if enabled:
            gc.enable()


def _translate(m) -> Translation:
    cycles, limit, tl = _timing(m)
    plan, i, lifted = [], 0, 0
    while i < limit:
        b = _Builder(m, i)
        j = i
        while j < limit and b.add(j):
            j += 1
        if j - i >= MIN_BLOCK and b.heavy:
            plan.append((i, j, b.finish(j)))
            lifted += j - i
            i = j
        else:
            stop = max(j, i + 1)
            if plan and plan[-1][2] is None:
                plan[-1] = (plan[-1][0], stop, None)
            else:
                plan.append((i, stop, None))
            i = stop
    ops = np.array([_INDEX[ins.name] for ins, _ in m.instrs], dtype=np.int16)
    return Translation(plan, limit, cycles, ops, tl, lifted)


_CACHE: dict = {}
_CACHE_MAX = 4


_SEEN: set = set()


def _code_key(m) -> tuple:
    """The code section's digest, the DDR size and the target (what the proofs depend
    on), computed once per machine."""
    key = getattr(m, "_code_key", None)
    if key is None:
        key = m._code_key = (hashlib.sha256(m.program.code).digest(), m.ddr.size,
                             m.target.fingerprint, tuple(b.size for b in m.bufs.values()))
    return key


def hot(m) -> bool:
    """True once this process has run the same code before (translation then pays:
    a one-shot run interprets, since translating costs more than it saves on one run)."""
    key = _code_key(m)
    if key in _CACHE or key in _SEEN:
        return True
    _SEEN.add(key)
    return False


def cached(m) -> Translation:
    """translate(m), memoised per process on `_code_key`."""
    key = _code_key(m)
    t = _CACHE.get(key)
    if t is None:
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.pop(next(iter(_CACHE)))
        t = _CACHE[key] = translate(m)
    return t
