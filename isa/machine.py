"""The machine model, as data and formulas: buffers, queues and the token channels that
join them, execution units, and per instruction what it reads and writes (its footprint)
and what it costs (cycles, MACs, DDR bytes), each a function of the decoded fields.

isa/table.py names one footprint and one cost formula per instruction (`Instr.footprint`,
`Instr.cycles`, `Instr.work`) with its queue and unit; everything that models the machine
derives from them: the timing model (isa/timeline.py, run by the emulator), the compiler's
dependency tokens (compiler/backend/tokens.py), its static timing replay
(compiler/pipeline.py), the performance report (compiler/report.py) and the static counts
(compiler/backend/stats.py).  This module imports only the standard library (isa/table.py
imports it, not the other way round).

Formulas take `f`, a mapping of field name -> value that has every field of the
instruction (a decoded word has them all; callers holding a partial dict, where omitted
fields encode as 0, pass `defaultdict(int, f)`) and, for costs, the Target.
"""
from __future__ import annotations

from typing import NamedTuple

from .errors import EdgecError

BUFFERS = ("IBUF", "WBUF", "ABUF", "XBUF")          # buffer id -> name
BUFFER_ID = {b: i for i, b in enumerate(BUFFERS)}   # name -> the code of a buf field
BUFFER_DTYPE = {"IBUF": "int8", "WBUF": "int8", "ABUF": "int32", "XBUF": "int32"}
XBUF_WORDS = 16384      # the scale unit's table (not a target parameter: a register file)
PATTERNS = ("FP", "EB", "WG")              # MAC training patterns
PATTERN_ID = {p: i for i, p in enumerate(PATTERNS)}
ROUND_MODES = ("nearest", "stochastic")
SPACES = BUFFERS + ("DDR",)                # what a footprint access names

# ---------------------------------------------------------------- queues and tokens

QUEUES = ("load", "compute", "store")
QUEUE_ID = {q: i for i, q in enumerate(QUEUES)}
DEP_BITS = ("pop_prev", "pop_next", "push_prev", "push_next")     # dep bit 0..3
POP_PREV, POP_NEXT, PUSH_PREV, PUSH_NEXT = 1, 2, 4, 8
# queue -> (prev neighbour, next neighbour); None: no neighbour on that side
NEIGHBOURS = {"load": (None, "compute"), "compute": ("load", "store"),
              "store": ("compute", None)}
# the FIFO channels (producer, consumer): one each way between neighbours
CHANNELS = tuple((q, n) for q in QUEUES for n in NEIGHBOURS[q] if n is not None)
# queue -> ((dep bit, producer queue) it can pop, ...) and ((dep bit, consumer), ...)
POPS = {q: tuple((bit, n) for bit, n in zip((POP_PREV, POP_NEXT), NEIGHBOURS[q])
                 if n is not None) for q in QUEUES}
PUSHES = {q: tuple((bit, n) for bit, n in zip((PUSH_PREV, PUSH_NEXT), NEIGHBOURS[q])
                   if n is not None) for q in QUEUES}

# ---------------------------------------------------------------- units

UNITS = ("dma", "mac", "vector")     # the busy-cycle counter of each: cycles_<unit>


class FieldError(EdgecError):
    """Fields a formula cannot cost (the emulator traps on them); callers add where."""


class Access(NamedTuple):
    """One range an instruction reads or writes.  space: a buffer (element addresses) or
    "DDR" (byte addresses); [lo, hi): hi None for a channel-bank DMA box, whose rows the
    index tables choose at run time (from lo on); write: written (and maybe read too);
    operand: which operand of the instruction it is (a field prefix: "a", "d", "box",
    "tab0", ...)."""
    space: str
    lo: int
    hi: int | None
    write: bool
    operand: str


def _buf(f, p: str, count: int, write: bool = False) -> Access:
    """The `count` elements of operand `p` (fields <p>buf, <p>addr)."""
    a = f[p + "addr"]
    return Access(BUFFERS[f[p + "buf"]], a, a + count, write, p)


def _abuf(f, field: str, count: int, write: bool = False) -> Access:
    a = f[field]
    return Access("ABUF", a, a + count, write, field[:-4])


def _xregs(f, *reads: str) -> list[Access]:
    """XBUF words of the dynamic format: the exponents `reads` (dyn=1; X[xo] alone with
    dynamic clamps, dcl=1) and the statistics pair at xs (st=1, read and written)."""
    if f["dyn"]:
        out = [Access("XBUF", f[r], f[r] + 1, False, r) for r in reads]
    elif f.get("dcl"):
        out = [Access("XBUF", f["xo"], f["xo"] + 1, False, "xo")]
    else:
        out = []
    if f.get("st"):
        out.append(Access("XBUF", f["xs"], f["xs"] + 2, True, "xs"))
    return out


def _pattern(f) -> str:
    p = f["pattern"]
    if p >= len(PATTERNS):
        raise FieldError(f"pattern {p} is not FP/EB/WG")
    return PATTERNS[p]


def _pool_out(f) -> tuple[int, int]:
    """Output plane height and width of MAXP/MAXPB."""
    if not (f["sh"] and f["sw"]):
        raise FieldError("pooling stride 0")
    return ((f["h"] + 2 * f["ph"] - f["kh"]) // f["sh"] + 1,
            (f["w"] + 2 * f["pw"] - f["kw"]) // f["sw"] + 1)


def _box_count(f) -> int:
    return f["n0"] * f["n1"] * f["n2"] * f["n3"]


def _table_bytes(f) -> int:
    """DDR bytes of the index tables a channel-bank DMA reads (LD/ST: none)."""
    g = f.get("gather", 0)
    return 4 * f["n0"] * (g & 1) + 4 * f["n1"] * (g >> 1 & 1)


# ---------------------------------------------------------------- footprints

def _dma_box(f, load: bool) -> list[Access]:
    count = _box_count(f)
    lo = f["ddr"]
    g = f.get("gather", 0)
    if g:
        hi = None
    else:
        hi = lo + f["esize"] * ((f["n0"] - 1) * f["s0"] + (f["n1"] - 1) * f["s1"]
                                + (f["n2"] - 1) * f["s2"] + (f["n3"] - 1) * f["s3"] + 1)
    out = [Access(BUFFERS[f["buf"]], f["baddr"], f["baddr"] + count, load, "buf"),
           Access("DDR", lo, hi, not load, "box")]
    for d in (0, 1):
        if g >> d & 1:
            t = f[f"tab{d}"]
            out.append(Access("DDR", t, t + 4 * f[f"n{d}"], False, f"tab{d}"))
    return out


def fp_load(f) -> list[Access]:
    """Writes the buffer tile [baddr, baddr + n0*n1*n2*n3); reads the DDR box (LDCH: rows
    chosen by the index tables) and the index tables."""
    return _dma_box(f, True)


def fp_store(f) -> list[Access]:
    """Reads the buffer tile; writes the DDR box (STCH: rows chosen by the index tables);
    reads the index tables."""
    return _dma_box(f, False)


def fp_seed(f) -> list[Access]:
    """Reads the uint32 at DDR ddr."""
    return [Access("DDR", f["ddr"], f["ddr"] + 4, False, "seed")]


def fp_none(f) -> list[Access]:
    """Nothing (tokens only)."""
    return []


def fp_mac(f) -> list[Access]:
    """Reads A and B, writes C (ABUF; acc=1 also reads it), with the tile sizes of the
    pattern (FP: X, W -> Y; EB: dY, W -> dX; WG: dY, X -> dW)."""
    n, ci, co, g = f["n"], f["ci"], f["co"], f["g"]
    x = n * g * ci * f["xh"] * f["xw"]
    y = n * g * co * f["yh"] * f["yw"]
    w = g * co * ci * f["kh"] * f["kw"]
    a, b, c = {"FP": (x, w, y), "EB": (y, w, x), "WG": (y, x, w)}[_pattern(f)]
    return [_buf(f, "a", a), _buf(f, "b", b), _abuf(f, "caddr", c, True)]


def fp_rq(f) -> list[Access]:
    """Reads the int32 tile at ABUF saddr, writes the int8 tile at d (n0*n1*n2*n3 each);
    dyn: reads X[xo], X[xa], X[xb]; st: the statistics pair at xs."""
    c = _box_count(f)
    return [_abuf(f, "saddr", c), _buf(f, "d", c, True), *_xregs(f, "xo", "xa", "xb")]


def fp_vmask(f) -> list[Access]:
    """Reads A and B, writes D (count elements each); dcl: reads X[xo]."""
    c = f["count"]
    out = [_buf(f, "a", c), _buf(f, "d", c, True), _buf(f, "b", c)]
    if f.get("dcl"):
        out.append(Access("XBUF", f["xo"], f["xo"] + 1, False, "xo"))
    return out


def fp_vadd(f) -> list[Access]:
    """Reads A (and B when nb=1), writes D (count elements each); dyn: reads X[xa],
    X[xb] (nb=1), X[xo]; st: the statistics pair at xs."""
    c = f["count"]
    out = [_buf(f, "a", c), _buf(f, "d", c, True)]
    if f["nb"]:
        out.append(_buf(f, "b", c))
    return out + _xregs(f, *(("xa", "xb", "xo") if f["nb"] else ("xa", "xo")))


def fp_maxp(f) -> list[Access]:
    """Reads the planes*h*w input planes at s, writes the pooled planes at d."""
    oh, ow = _pool_out(f)
    return [_buf(f, "s", f["planes"] * f["h"] * f["w"]),
            _buf(f, "d", f["planes"] * oh * ow, True)]


def fp_maxpb(f) -> list[Access]:
    """Reads X (planes*h*w) and dY (the pooled size), writes dX (planes*h*w)."""
    oh, ow = _pool_out(f)
    hw = f["planes"] * f["h"] * f["w"]
    return [_buf(f, "x", hw), _buf(f, "g", f["planes"] * oh * ow), _buf(f, "d", hw, True)]


def fp_rsum(f) -> list[Access]:
    """Reads the n*c*hw tile at s, writes the c sums at ABUF daddr (acc=1 also reads)."""
    return [_buf(f, "s", f["n"] * f["c"] * f["hw"]), _abuf(f, "daddr", f["c"], True)]


def _vmulc_counts(f) -> tuple[int, int, int]:
    """Elements of A, B and C of VMULC (mode 0: per-plane scalars B; mode 1: plane dots)."""
    t = f["planes"] * f["hw"]
    return (t, f["planes"], t) if f["mode"] == 0 else (t, t, f["planes"])


def fp_vmulc(f) -> list[Access]:
    """Reads A (planes*hw) and B (mode 0: planes; mode 1: planes*hw), writes C at ABUF
    caddr (mode 0: planes*hw; mode 1: planes)."""
    a, b, c = _vmulc_counts(f)
    return [_buf(f, "a", a), _buf(f, "b", b), _abuf(f, "caddr", c, True)]


def fp_cstat(f) -> list[Access]:
    """Reads the n*c*hw tile at s, writes the [2, c] sums at ABUF daddr."""
    return [_buf(f, "s", f["n"] * f["c"] * f["hw"]), _abuf(f, "daddr", 2 * f["c"], True)]


def fp_bnadapt(f) -> list[Access]:
    """Reads the [2, c] statistics at ABUF saddr; updates B (ABUF baddr, c) and Q (q, c)."""
    c = f["c"]
    return [_abuf(f, "saddr", 2 * c), _abuf(f, "baddr", c, True), _buf(f, "q", c, True)]


def _luts(f) -> int:
    """ABUF words of the (student's) exp tables: 256, or 256 per table with dyn=1."""
    return 256 * max(1, f["nlut"]) if f["dyn"] else 256


def fp_lossg(f) -> list[Access]:
    """Reads the logits [n, k] at z, the n labels at ABUF laddr and the exp table(s) at
    ABUF lutaddr; writes the error [n, k] at d; dyn: reads X[xz]."""
    nk = f["n"] * f["k"]
    return [_buf(f, "z", nk), _abuf(f, "laddr", f["n"]), _abuf(f, "lutaddr", _luts(f)),
            _buf(f, "d", nk, True), *_xregs(f, "xz")]


def fp_losst(f) -> list[Access]:
    """Reads the student and teacher logits [n, k] at z and t and both exp tables (ABUF
    lutaddr, tlutaddr); writes the error [n, k] at d; dyn: reads X[xz]."""
    nk = f["n"] * f["k"]
    return [_buf(f, "z", nk), _buf(f, "t", nk), _abuf(f, "lutaddr", _luts(f)),
            _abuf(f, "tlutaddr", 256), _buf(f, "d", nk, True), *_xregs(f, "xz")]


def fp_sgd(f) -> list[Access]:
    """Reads the gradient at g (unless ng=1); updates the master at ABUF maddr (and the
    momentum at ABUF vaddr when mom=1); writes the compute copy at d (count each); dyn:
    reads X[xg], X[xc], X[xd]; st: the statistics pair at xs."""
    c = f["count"]
    return [*([] if f["ng"] else [_buf(f, "g", c)]), _abuf(f, "maddr", c, True),
            *([_abuf(f, "vaddr", c, True)] if f["mom"] else []), _buf(f, "d", c, True),
            *_xregs(f, "xg", "xc", "xd")]


def fp_expupd(f) -> list[Access]:
    """Updates the exponent table X[xaddr .. xaddr + 10*count)."""
    a = f["xaddr"]
    return [Access("XBUF", a, a + 10 * f["count"], True, "x")]


# ---------------------------------------------------------------- costs

def dma_cycles(nbytes: int, tg) -> int:
    """A DMA moving `nbytes` DDR bytes: setup latency + the transfer on the DDR port."""
    return tg.ddr_latency + -(-nbytes // tg.ddr_bytes_per_cycle)


def vector_cycles(elements: int, tg) -> int:
    """A vector op over `elements` elements: 4 + ceil(elements / lanes)."""
    return 4 + -(-elements // tg.vector_lanes)


# The cycle formulas run once per executed instruction in the emulator: one call each,
# the arithmetic inline.

def cy_dma(f, tg) -> int:
    """latency + ceil(box bytes / DDR bytes per cycle)."""
    return tg.ddr_latency + -(-(f["esize"] * f["n0"] * f["n1"] * f["n2"] * f["n3"])
                              // tg.ddr_bytes_per_cycle)


def cy_dma_gather(f, tg) -> int:
    """latency + ceil((box bytes + index table bytes) / DDR bytes per cycle)."""
    g = f["gather"]
    n = (f["esize"] * f["n0"] * f["n1"] * f["n2"] * f["n3"]
         + 4 * f["n0"] * (g & 1) + 4 * f["n1"] * (g >> 1 & 1))
    return tg.ddr_latency + -(-n // tg.ddr_bytes_per_cycle)


def cy_one(f, tg) -> int:
    """1 cycle."""
    return 1


def cy_mac(f, tg) -> int:
    """n*yh*yw*kh*kw * ceil(g/P) * ceil(a/rows) * ceil(b/cols) (Target.mac_group_passes;
    (a, b) = (ci, co) for FP, (co, ci) for EB/WG)."""
    a, b = (f["ci"], f["co"]) if _pattern(f) == "FP" else (f["co"], f["ci"])
    return (f["n"] * f["yh"] * f["yw"] * f["kh"] * f["kw"]
            * tg.mac_group_passes(a, b, f["g"]))


def cy_box(f, tg) -> int:
    """4 + ceil(n0*n1*n2*n3 / lanes)."""
    return 4 + -(-(f["n0"] * f["n1"] * f["n2"] * f["n3"]) // tg.vector_lanes)


def cy_count(f, tg) -> int:
    """4 + ceil(count / lanes)."""
    return 4 + -(-f["count"] // tg.vector_lanes)


def cy_pool(f, tg) -> int:
    """4 + ceil(planes*oh*ow*kh*kw / lanes)."""
    oh, ow = _pool_out(f)
    return vector_cycles(f["planes"] * max(0, oh) * max(0, ow) * f["kh"] * f["kw"], tg)


def cy_sums(f, tg) -> int:
    """4 + ceil(n*c*hw / lanes)."""
    return 4 + -(-(f["n"] * f["c"] * f["hw"]) // tg.vector_lanes)


def cy_vmulc(f, tg) -> int:
    """4 + ceil(planes*hw / lanes)."""
    return 4 + -(-(f["planes"] * f["hw"]) // tg.vector_lanes)


def cy_bnadapt(f, tg) -> int:
    """4 + ceil(8*c / lanes)."""
    return vector_cycles(8 * f["c"], tg)


def cy_lossg(f, tg) -> int:
    """4 + ceil(n*k / lanes)."""
    return vector_cycles(f["n"] * f["k"], tg)


def cy_losst(f, tg) -> int:
    """4 + ceil(2*n*k / lanes) (student and teacher rows)."""
    return vector_cycles(2 * f["n"] * f["k"], tg)


class Work(NamedTuple):
    """What an instruction does besides taking cycles: multiply-accumulates, DDR bytes of
    its box, and DDR bytes beyond the box (index tables, the seed word)."""
    macs: int
    ddr_bytes: int
    index_bytes: int


NO_WORK = Work(0, 0, 0)


def wk_none(f) -> Work:
    return NO_WORK


def wk_dma(f) -> Work:
    return Work(0, f["esize"] * _box_count(f), _table_bytes(f))


def wk_seed(f) -> Work:
    return Work(0, 0, 4)


def wk_mac(f) -> Work:
    return Work(mac_count(f), 0, 0)


def mac_count(f) -> int:
    """n*yh*yw*kh*kw*ci*co*g multiply-accumulates of a MAC word."""
    return f["n"] * f["yh"] * f["yw"] * f["kh"] * f["kw"] * f["ci"] * f["co"] * f["g"]


def check_model(instrs) -> None:
    """EdgecError naming the first instruction whose queue, unit, footprint or cost is
    missing: every instruction of the table must model all four."""
    for i in instrs:
        bad = [what for what, ok in (("queue", i.queue in QUEUES), ("unit", i.unit in UNITS),
                                     ("footprint", callable(i.footprint)),
                                     ("cycles", callable(i.cycles)),
                                     ("work", callable(i.work))) if not ok]
        if bad:
            raise EdgecError(f"isa/table.py: instruction {i.name} has no valid "
                             f"{', '.join(bad)} (see docs/architecture.md, 'Adding an "
                             "instruction')")
