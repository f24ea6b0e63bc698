"""The instruction set, as data.  This table is the single source of truth: the encoder,
decoder, assembler, disassembler, docs/isa.md and the emulator's dispatch all derive from it,
and so does every model of the machine: each row also names its unit, its footprint (what
it reads and writes) and its cost, formulas of the fields in isa/machine.py, from which
the emulator's timing, the compiler's dependency tokens, its timing replay and its report
are computed.

Every instruction is one fixed-width little-endian word of WORD_BYTES bytes.  Fields are
packed from bit 0 upwards in the order listed: first the common fields (opcode, dep), then
the instruction's own fields.  Unused high bits must be zero (a word with stray bits is
malformed and the emulator traps on it).

Machine model (see docs/isa.md for the full text):
* DDR: a flat little-endian byte array.  prog.bin's initial image (its tables and data
  sections, isa/container.py) is loaded at address 0.
* Four on-chip buffers, addressed in ELEMENTS: IBUF (int8, activations/errors),
  WBUF (int8, weights), ABUF (int32: accumulators, master weights, biases, labels, LUTs)
  and XBUF (int32, XBUF_WORDS words: the scale unit's table of tensor exponents and
  saturation statistics, dynamic fixed point; see EXPUPD and docs/numerics.md).
* Three queues: load (LD, LDCH, SEED), compute (MAC, vector ops, SYNC, END), store (ST,
  STCH).  Each queue runs its instructions in program order; the queues overlap and
  synchronise only through dependency tokens in the `dep` field, as in VTA: bit0
  pop_prev, bit1 pop_next, bit2 push_prev, bit3 push_next.  Neighbours: load <-> compute
  <-> store (prev of compute = load, next of compute = store); four FIFO channels
  load->compute, compute->load, compute->store, store->compute.
* Timing: an instruction starts when its queue is free and every token it pops has been
  pushed; a token carries the pusher's END time.  LD/LDCH/ST/STCH also share one DDR
  port: after the setup latency the transfer waits for a free window of the port.  A pop
  needs a token pushed by an EARLIER instruction (in program order) that no earlier pop
  took, else the machine traps; END waits for all queues and traps on unconsumed tokens.
  Results never depend on timing: data effects happen in program order, so a program
  whose tokens miss a real dependency computes the same values but its cycle count is
  not achievable by hardware.  The compiler derives the tokens from every
  instruction's buffer and DDR footprint (below; compiler/backend/tokens.py).
* Tensors in buffers are dense row-major tiles; each instruction names its tile shapes.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import machine as M
from .machine import (BUFFER_DTYPE, BUFFERS, DEP_BITS, PATTERNS, QUEUES,  # noqa: F401
                      ROUND_MODES, XBUF_WORDS)

WORD_BYTES = 64
WORD_BITS = WORD_BYTES * 8

# the spelling of every dep value in assembly, e.g. 5 = pop_prev_push_prev, 0 = none
DEP_NAMES = tuple("_".join(b for k, b in enumerate(DEP_BITS) if v >> k & 1) or "none"
                  for v in range(16))


@dataclass(frozen=True)
class Field:
    name: str
    bits: int
    signed: bool = False
    doc: str = ""
    kind: str = "int"   # int | buf | pattern | round | ddr (a DDR byte address) | dep
    valid: tuple[int, int] | None = None   # the values the machine accepts (it traps on
    # others), checked when the compiler or the assembler encodes; None: any that fits


@dataclass(frozen=True)
class Instr:
    """One instruction: its encoding (opcode, fields), its documentation, and its machine
    model (isa/machine.py): the queue it runs on, the unit whose busy cycles it counts,
    what it reads and writes (`footprint(f)`, a list of machine.Access), its cycles
    (`cycles(f, target)`) and its work (`work(f)`: MACs, DDR bytes); `ddr_port`: a DMA
    whose transfer waits for the shared DDR port; `barrier`: END, which waits for every
    queue."""
    name: str
    opcode: int
    queue: str
    fields: tuple[Field, ...]
    doc: str
    unit: str
    footprint: Callable
    cycles: Callable
    work: Callable = M.wk_none
    ddr_port: bool = False
    barrier: bool = False

    @property
    def all_fields(self) -> tuple[Field, ...]:
        return COMMON + self.fields


COMMON = (
    Field("opcode", 8, doc="instruction number"),
    Field("dep", 4, kind="dep", doc="dependency tokens: bit0 pop_prev, bit1 pop_next, "
          "bit2 push_prev, bit3 push_next"),
)


def _buf(prefix: str, what: str) -> tuple[Field, Field]:
    return (Field(f"{prefix}buf", 2, kind="buf", doc=f"buffer of {what} (IBUF, WBUF, ABUF)"),
            Field(f"{prefix}addr", 20, doc=f"element address of {what} in its buffer"))


_DMA = (
    Field("buf", 2, kind="buf", doc="on-chip buffer (IBUF, WBUF, ABUF)"),
    Field("baddr", 20, doc="element address of the dense tile in the buffer"),
    Field("ddr", 32, kind="ddr", doc="DDR byte address of element (0,0,0,0)"),
    Field("esize", 3, doc="bytes per DDR element: 1 (IBUF/WBUF) or 4 (ABUF)"),
    Field("n0", 16, doc="extent of dim 0 (outermost)"),
    Field("n1", 16, doc="extent of dim 1"),
    Field("n2", 16, doc="extent of dim 2"),
    Field("n3", 16, doc="extent of dim 3 (innermost)"),
    Field("s0", 24, doc="DDR stride of dim 0, in elements (0 broadcasts)"),
    Field("s1", 24, doc="DDR stride of dim 1, in elements"),
    Field("s2", 24, doc="DDR stride of dim 2, in elements"),
    Field("s3", 24, doc="DDR stride of dim 3, in elements"),
)
_GATHER = (
    Field("gather", 2, doc="bit0: dim 0 indexed through tab0; bit1: dim 1 through tab1"),
    Field("tab0", 32, kind="ddr", doc="DDR byte address of the int32 channel index table "
          "for dim 0"),
    Field("tab1", 32, kind="ddr", doc="DDR byte address of the int32 channel index table "
          "for dim 1"),
)
_DMA_DOC = ("Element (i0,i1,i2,i3) of the box is buffer element "
            "baddr + ((i0*n1+i1)*n2+i2)*n3+i3 and DDR bytes "
            "ddr + esize*(j0*s0 + j1*s1 + i2*s2 + i3*s3)")

_POOL_GEOM = (
    Field("planes", 32, doc="number of (n, c) planes in the tile"),
    Field("h", 16, doc="input plane height"),
    Field("w", 16, doc="input plane width"),
    Field("kh", 8), Field("kw", 8), Field("sh", 8), Field("sw", 8),
    Field("ph", 8), Field("pw", 8),
)

def _x(name: str, what: str) -> Field:
    return Field(name, 16, doc=f"XBUF address of {what}")


_DYN = Field("dyn", 1, doc="1: dynamic fixed point, the shifts come from XBUF exponents "
             "(see the description); 0: from the immediate fields")
_STAT = (Field("st", 1, doc="1: add this instruction's saturation count to X[xs] and raise "
               "X[xs+1] to its largest |result|"),
         _x("xs", "the statistics pair [saturations, max |result|] of the result's tensor"))
_STAT_DOC = (" Statistics (st=1): X[xs] += the number of elements whose rounded value r "
             "saturated (r > 127 while hi = 127, or r < -127 while lo = -127); "
             "X[xs+1] = max(X[xs+1], max |q|).")

_CLAMP = (
    Field("lo", 8, signed=True, doc="clamp: lower bound of the int8 result (-127..hi)"),
    Field("hi", 8, signed=True, doc="clamp: upper bound of the int8 result (lo..127)"),
)

_DCLAMP = (
    Field("dcl", 1, doc="1: the clamp bounds follow the exponent X[xo] (dynamic "
          "Hardtanh/ReLU6; see the description); 0: the lo/hi fields"),
    Field("clo", 16, signed=True, doc="dcl: the lower clamp bound in units of 2^ce"),
    Field("chi", 16, signed=True, doc="dcl: the upper clamp bound in units of 2^ce"),
    Field("ce", 8, signed=True, doc="dcl: the exponent of clo and chi"),
)
_DCLAMP_DOC = (" Dynamic clamp (dcl=1): with k = X[xo] - ce (traps unless 0 <= k <= 31), "
               "lo = max(rshift(clo, k, nearest), -127), hi = min(rshift(chi, k, nearest), "
               "127) instead of the lo/hi fields.")

_LUTSEL = (_DYN, _x("xz", "the logits' exponent"),
           Field("lutlo", 8, signed=True, doc="dyn: the logit exponent of table 0"),
           Field("nlut", 8, doc="dyn: number of consecutive 256-entry tables at lutaddr"))
_LUTSEL_DOC = (" dyn=1: the exp table is the j-th of nlut consecutive 256-entry tables at "
               "lutaddr, j = X[xz] - lutlo (one per logit exponent); traps unless "
               "0 <= j < nlut.")

INSTRS: tuple[Instr, ...] = (
    Instr("END", 0, "compute", (), "Stop the machine.",
          unit="vector", footprint=M.fp_none, cycles=M.cy_one, barrier=True),
    Instr("SYNC", 15, "compute", (),
          "No data effect (1 cycle): carries tokens between the load and store queues, "
          "e.g. pop_next (wait for a store) + push_prev (release a load).",
          unit="vector", footprint=M.fp_none, cycles=M.cy_one),
    Instr("SEED", 1, "load", (Field("ddr", 32, kind="ddr", doc="DDR byte address of a uint32"),),
          "Load the stochastic-rounding seed register from a uint32 in DDR.",
          unit="dma", footprint=M.fp_seed, cycles=M.cy_one, work=M.wk_seed),
    Instr("LD", 2, "load", _DMA,
          "Strided box load DDR -> buffer (4-D). " + _DMA_DOC +
          " with j0=i0, j1=i1. DDR elements are signed little-endian.",
          unit="dma", footprint=M.fp_load, cycles=M.cy_dma, work=M.wk_dma, ddr_port=True),
    Instr("LDCH", 3, "load", _DMA + _GATHER,
          "Dynamic channel-bank load: LD whose dim 0 and/or dim 1 index is looked up in an "
          "int32 channel index table in DDR (j0=tab0[i0] if gather bit0, j1=tab1[i1] if "
          "bit1), so only kept channels are fetched. " + _DMA_DOC + ".",
          unit="dma", footprint=M.fp_load, cycles=M.cy_dma_gather, work=M.wk_dma, ddr_port=True),
    Instr("ST", 4, "store", _DMA, "Strided box store buffer -> DDR, the inverse of LD.",
          unit="dma", footprint=M.fp_store, cycles=M.cy_dma, work=M.wk_dma, ddr_port=True),
    Instr("STCH", 5, "store", _DMA + _GATHER,
          "Channel-bank store: the inverse of LDCH (scatters only kept channels).",
          unit="dma", footprint=M.fp_store, cycles=M.cy_dma_gather, work=M.wk_dma, ddr_port=True),
    Instr("MAC", 6, "compute", (
        Field("pattern", 2, kind="pattern", valid=(0, 2),
              doc="FP (forward), EB (error back-prop), WG (weight gradient)"),
        Field("acc", 1, doc="1: add into C; 0: overwrite C"),
        *_buf("a", "operand A"), *_buf("b", "operand B"),
        Field("caddr", 20, doc="ABUF element address of the int32 result tile C"),
        Field("n", 16, doc="batch extent of the tile"),
        Field("ci", 16, doc="input channels"), Field("co", 16, doc="output channels"),
        Field("xh", 16, doc="X tile height"), Field("xw", 16, doc="X tile width"),
        Field("yh", 16, doc="Y tile height"), Field("yw", 16, doc="Y tile width"),
        Field("kh", 8), Field("kw", 8), Field("sh", 8), Field("sw", 8),
        Field("ph", 8), Field("pw", 8),
        Field("xh0", 16, doc="global row of X tile row 0"),
        Field("xw0", 16, doc="global column of X tile column 0"),
        Field("yh0", 16, doc="global row of Y tile row 0"),
        Field("yw0", 16, doc="global column of Y tile column 0"),
        Field("g", 16, doc="groups in the tile (>= 1)"),
    ), "MAC-array (grouped) convolution on tiles, int8 x int8 -> int32. Tiles: "
       "X[n,g*ci,xh,xw], W[g*co,ci,kh,kw], Y[n,g*co,yh,yw]; group j's output channels "
       "j*co..j*co+co-1 read only X channels j*ci..j*ci+ci-1 (g=1: ordinary convolution; "
       "ci=co=1: depthwise). X and Y tiles sit at global offsets (xh0,xw0), (yh0,yw0); "
       "global x row = y row*sh - ph + kh. "
       "FP: A=X, B=W, C=Y, Y[n,j*co+o] = sum_{c,kh,kw} X[n,j*ci+c] * W[j*co+o,c,kh,kw]. "
       "EB: A=dY, B=W, C=dX, dX[n,j*ci+c] = sum_{o,kh,kw} dY[n,j*co+o] * W[j*co+o,c]. "
       "WG: A=dY, B=X, C=dW, dW[j*co+o,c,kh,kw] = sum_{n,y,x} dY[n,j*co+o] * X[n,j*ci+c]. "
       "Terms whose X element lies outside the X tile are zero. Traps if C leaves int32. "
       "Counts n*yh*yw*kh*kw*ci*co*g MACs. Cycles: n*yh*yw*kh*kw * ceil(g/P) * "
       "ceil(a/rows) * ceil(b/cols), (a, b) = (ci, co) for FP, (co, ci) for EB/WG: P = "
       "max(1, min(rows // a, cols // b)) groups share the array side by side (depthwise "
       "and grouped convs).",
          unit="mac", footprint=M.fp_mac, cycles=M.cy_mac, work=M.wk_mac),
    Instr("RQ", 7, "compute", (
        Field("saddr", 20, doc="ABUF element address of the int32 source tile"),
        *_buf("d", "the int8 result"),
        Field("n0", 16), Field("n1", 16), Field("n2", 16), Field("n3", 16),
        Field("shift", 8, signed=True, valid=(-31, 31),
              doc="right shift (negative: left shift)"),
        Field("mode", 1, kind="round", doc="nearest or stochastic rounding"),
        Field("tid", 16, doc="tensor id for the counter-based random bits"),
        Field("gbase", 32, doc="flat index in the whole tensor of tile element 0"),
        Field("g0", 32), Field("g1", 32), Field("g2", 32), Field("g3", 32, doc=""),
        *_CLAMP,
        _DYN, _x("xo", "the result's exponent"), _x("xa", "the first operand's exponent"),
        _x("xb", "the second operand's exponent"), *_STAT, *_DCLAMP,
    ), "Requantize int32 -> int8: q = min(max(sat8(rshift(v, shift, mode, r)), lo), hi) "
       "(lo=-127, hi=127: no activation; lo=0: ReLU). "
       "Stochastic mode adds rand32(seed, tid, idx) >> (32-shift) before the floor, where "
       "idx = gbase + i0*g0 + i1*g1 + i2*g2 + i3*g3. dyn=1: shift = X[xo] - X[xa] - X[xb] "
       "(the accumulator's exponent is the sum of its operands'; the shift field is "
       "ignored). Traps unless -127 <= lo <= hi <= 127 and -31 <= shift <= 31." + _STAT_DOC
       + _DCLAMP_DOC,
          unit="vector", footprint=M.fp_rq, cycles=M.cy_box),
    Instr("VMASK", 8, "compute", (
        *_buf("a", "A"), *_buf("b", "B"), *_buf("d", "the result"),
        Field("count", 32, doc="elements"),
        Field("lo", 16, signed=True, doc="exclusive lower bound on B"),
        Field("hi", 16, signed=True, doc="exclusive upper bound on B"),
        _x("xo", "B's exponent (dcl)"), *_DCLAMP,
    ), "Range mask: D[i] = A[i] if lo < B[i] < hi else 0. ReLU backward: A=dY, B=Y, "
       "lo=0, hi=128 (a saturated 127 still passes); Hardtanh backward: A=dY, B=Y, lo/hi = "
       "its integer clamp bounds (an output at a bound came from an input at or beyond it). "
       "dcl=1 (a dynamic Hardtanh's backward): with k = X[xo] - ce (traps unless 0 <= k <= "
       "31), bl = rshift(clo, k, nearest), bh = rshift(chi, k, nearest): lo = bl if bl >= "
       "-127 else -128, hi = bh if bh <= 127 else 128 (a bound beyond int8: the saturated "
       "+-127 still passes).",
          unit="vector", footprint=M.fp_vmask, cycles=M.cy_count),
    Instr("MAXP", 9, "compute", (*_buf("s", "the input planes"), *_buf("d", "the output"),
                                 *_POOL_GEOM),
          "Max pooling over planes (floor mode, -inf padding).",
          unit="vector", footprint=M.fp_maxp, cycles=M.cy_pool),
    Instr("MAXPB", 10, "compute", (*_buf("x", "the pooling input X"),
                                   *_buf("g", "the output error dY"),
                                   *_buf("d", "the input error dX"), *_POOL_GEOM),
          "Max-pool backward: each dY element goes to the first maximum of its window "
          "(row-major); dX = sat8(sum of what each element receives).",
          unit="vector", footprint=M.fp_maxpb, cycles=M.cy_pool),
    Instr("RSUM", 11, "compute", (
        *_buf("s", "the int8 tile [n, c, hw]"),
        Field("daddr", 20, doc="ABUF element address of the int32 [c] result"),
        Field("n", 16), Field("c", 16), Field("hw", 32),
        Field("acc", 1, doc="1: add into the result; 0: overwrite"),
    ), "Bias gradient: D[c] (+)= sum over n, hw of S[n, c, hw]. Traps if D leaves int32.",
          unit="vector", footprint=M.fp_rsum, cycles=M.cy_sums),
    Instr("VMULC", 17, "compute", (
        Field("mode", 1, doc="0: per-plane scalar product; 1: per-plane dot product"),
        *_buf("a", "the int8 tile A [planes, hw]"),
        *_buf("b", "the int8 operand B ([planes] in mode 0, [planes, hw] in mode 1)"),
        Field("caddr", 20, doc="ABUF element address of the int32 result C"),
        Field("planes", 16), Field("hw", 32),
    ), "Channel-broadcast multiply (squeeze-excitation gating): mode 0: C[p, i] = A[p, i] "
       "* B[p] (int32 [planes, hw]); mode 1: C[p] = sum over i of A[p, i] * B[p, i] "
       "(int32 [planes]). Products of int8 operands, exact; traps if a sum leaves int32. "
       "RQ rounds C.",
          unit="vector", footprint=M.fp_vmulc, cycles=M.cy_vmulc),
    Instr("LOSSG", 12, "compute", (
        *_buf("z", "the int8 logits [n, k]"),
        Field("laddr", 20, doc="ABUF address of the int32 labels [n]"),
        Field("lutaddr", 20, doc="ABUF address of the int32 exp table [256]"),
        *_buf("d", "the int8 logit error [n, k]"),
        Field("n", 16), Field("k", 16),
        Field("rmul", 24, doc="round(2^16 / batch)"),
        Field("shift", 8, valid=(0, 31), doc="right shift of G*rmul"),
        *_LUTSEL,
    ), "Softmax cross-entropy gradient in integers (docs/numerics.md): "
       "P = floor(LUT[max-z] * 2^15 / sum), G = P - 2^15*onehot, "
       "D = sat8(round_nearest(G*rmul / 2^shift))." + _LUTSEL_DOC,
          unit="vector", footprint=M.fp_lossg, cycles=M.cy_lossg),
    Instr("LOSST", 16, "compute", (
        *_buf("z", "the int8 student logits [n, k]"),
        *_buf("t", "the int8 teacher logits [n, k]"),
        Field("lutaddr", 20, doc="ABUF address of the student's int32 exp table [256]"),
        Field("tlutaddr", 20, doc="ABUF address of the teacher's int32 exp table [256]"),
        *_buf("d", "the int8 logit error [n, k]"),
        Field("n", 16), Field("k", 16),
        Field("rmul", 24, doc="round(2^16 / batch)"),
        Field("shift", 8, valid=(0, 31), doc="right shift of G*rmul"),
        Field("kd", 1, doc="0: pseudo labels (teacher argmax); 1: distillation (teacher "
              "softmax)"),
        Field("thresh", 16, valid=(0, 1 << 15),
              doc="pseudo labels: confidence threshold in Q15 (0..32768)"),
        *_LUTSEL,
    ), "Loss gradient with a frozen teacher's logits as the target (docs/numerics.md): "
       "P = floor(LUT[max z - z] * 2^15 / S), F = TLUT[max t - t], ST = sum F; "
       "pseudo: G = (2^30 >= thresh*ST) ? P - 2^15*onehot(first argmax t) : 0; "
       "kd: G = P - floor(F * 2^15 / ST); D = sat8(round_nearest(G*rmul / 2^shift))."
       + _LUTSEL_DOC + " (the student's table; the teacher's is fixed)",
          unit="vector", footprint=M.fp_losst, cycles=M.cy_losst),
    Instr("SGD", 13, "compute", (
        Field("maddr", 20, doc="ABUF address of the int32 master tile (updated in place)"),
        *_buf("g", "the int8 gradient"),
        *_buf("d", "the compute copy (int8 in IBUF/WBUF, int32 in ABUF)"),
        Field("count", 32, doc="elements"),
        Field("lrmul", 32, signed=True, doc="learning rate in master units * 2^lrshift"),
        Field("lrshift", 8, valid=(0, 31), doc="right shift of G*lrmul (0..31)"),
        Field("cshift", 8, valid=(0, 31), doc="master -> compute copy right shift"),
        Field("cbits", 8, valid=(1, 32), doc="compute copy width in bits (saturation bound)"),
        _DYN, _x("xg", "the gradient's exponent"),
        _x("xc", "the compute copy's exponent (first term)"),
        _x("xd", "the compute copy's exponent (second term; biases: e_x + e_w)"),
        Field("emas", 8, signed=True, doc="dyn: the master's exponent"),
        Field("lrbase", 8, signed=True, doc="dyn: lrshift + the gradient's compile-time "
              "exponent"),
        Field("mbound", 32, doc="dyn: the master's saturation bound"),
        Field("ng", 1, doc="1: no gradient (G = 0, gbuf not read): re-derive the copy"),
        *_STAT,
        Field("mom", 1, doc="1: momentum / weight decay: the int32 momentum tile V at vaddr "
              "is read and updated in place"),
        Field("vaddr", 20, doc="mom: ABUF address of the int32 momentum tile V"),
        Field("mumul", 32, valid=(0, 1 << 30), doc="mom: momentum mu * 2^mushift"),
        Field("mushift", 8, valid=(0, 31), doc="mom: right shift of V*mumul (0..31)"),
        Field("wdmul", 32, signed=True, doc="mom: lr * weight decay * 2^wdshift"),
        Field("wdshift", 8, valid=(0, 31), doc="mom: right shift of M*wdmul (0..31)"),
    ), "Weight update: M = clamp(M - round(G*lrmul / 2^lrshift), +-bound), "
       "bound = (2^(cbits-1)-1) << cshift; D = round(M / 2^cshift). dyn=1: lrshift = "
       "lrbase - X[xg], cshift = X[xc] + X[xd] - emas, bound = mbound, and "
       "D = sat_cbits(r), r = round(M / 2^cshift); traps unless 0 <= lrshift <= 31 and "
       "-31 <= cshift <= 31. Statistics (st=1): X[xs] += #{|r| > 2^(cbits-1)-1}, "
       "X[xs+1] = max(X[xs+1], max |D|). mom=1 (momentum, weight decay): "
       "u = round(G*lrmul / 2^lrshift), d = round(M*wdmul / 2^wdshift), "
       "V = sat32(round(V*mumul / 2^mushift) + u + d), M = clamp(M - V, +-bound); traps "
       "unless 0 <= mushift, wdshift <= 31 and mumul <= 2^30.",
          unit="vector", footprint=M.fp_sgd, cycles=M.cy_count),
    Instr("VADD", 14, "compute", (
        *_buf("a", "A (int8)"), *_buf("b", "B (int8)"), *_buf("d", "the int8 result"),
        Field("count", 32, doc="elements"),
        Field("nb", 1, doc="1: operand B present; 0: absent (treated as 0, not read)"),
        Field("sa", 5, doc="left shift of A (alignment)"),
        Field("sb", 5, doc="left shift of B (alignment)"),
        Field("shift", 8, signed=True, valid=(-31, 31),
              doc="right shift of the sum (negative: left shift)"),
        Field("mode", 1, kind="round", doc="nearest or stochastic rounding"),
        Field("tid", 16, doc="tensor id for the counter-based random bits"),
        Field("gbase", 32, doc="flat index in the whole tensor of element 0"),
        *_CLAMP,
        _DYN, _x("xa", "A's exponent"), _x("xb", "B's exponent"),
        _x("xo", "the result's exponent"), *_STAT, *_DCLAMP,
    ), "Elementwise add with power-of-two alignment, rounding, saturation and clamp: "
       "residual adds (nearest), sums of back-propagated errors (stochastic), standalone "
       "ReLU/Hardtanh (nb=0, sa=0, shift=0). "
       "D[i] = min(max(sat8(rshift(A[i]*2^sa + B[i]*2^sb, shift, mode, r)), lo), hi) in "
       "int64, r = rand32(seed, tid, gbase + i) (drawn only when stochastic and shift > 0). "
       "A, B, D must be IBUF or WBUF. dyn=1: with m = min(X[xa], X[xb]) (nb=0: m = X[xa]), "
       "sa = X[xa] - m, sb = X[xb] - m, shift = X[xo] - m instead of the fields. Traps "
       "unless 0 <= sa, sb <= 31, -31 <= shift <= 31 and -127 <= lo <= hi <= 127." + _STAT_DOC
       + _DCLAMP_DOC,
          unit="vector", footprint=M.fp_vadd, cycles=M.cy_count),
    Instr("CSTAT", 24, "compute", (
        *_buf("s", "the int8 tile [n, c, hw]"),
        Field("daddr", 20, doc="ABUF element address of the int32 [2, c] result"),
        Field("n", 16), Field("c", 16), Field("hw", 32),
        Field("acc", 1, doc="1: add into the result; 0: overwrite"),
    ), "Channel statistics (BatchNorm adaptation): D[0, c] (+)= sum over n, hw of S[n, c, hw], "
       "D[1, c] (+)= sum of S[n, c, hw]^2. Traps if D leaves int32.",
          unit="vector", footprint=M.fp_cstat, cycles=M.cy_sums),
    Instr("BNADAPT", 25, "compute", (
        Field("saddr", 20, doc="ABUF address of the int32 statistics [2, c] (sums, squares)"),
        Field("baddr", 20, doc="ABUF address of the int32 mean bias or shift [c] (in place)"),
        *_buf("q", "the int8 scale [c] (in place)"),
        Field("c", 16, doc="channels"),
        Field("cnt", 32, doc="elements per channel the statistics summed (n*h*w)"),
        Field("mode", 1, doc="0: B is the producing conv's bias (mean folded in); "
              "1: B is the BN shift"),
        Field("d", 8, signed=True, doc="exponent difference: mode 0 e_x - e_B; "
              "mode 1 e_x + e_Q - e_B"),
        Field("p", 8, signed=True, doc="-(e_x + e_Q)"),
        Field("eps", 32, doc="round(eps * cnt^2 * 2^(-2 e_x))"),
        Field("m", 4, doc="momentum: constants move 2^-m of the way to the batch values"),
    ), "BatchNorm statistics update from CSTAT sums (docs/numerics.md, adapt-bn): per "
       "channel A = S2*cnt - S1^2 + eps, Qb = #{q in 1..127: (2q-1)^2 A 2^max(0,-2p) <= "
       "4 cnt^2 2^max(0,2p)}, Q += rdiv(Qb - Q, 2^m); mode 0: B -= rdiv(S1 2^d, cnt 2^m); "
       "mode 1: B += rdiv(-rdiv(S1 Qb 2^d, cnt) - B, 2^m) (negative exponents move to the "
       "divisor); rdiv(a, b) = floor((2a + b) / 2b). Exact integers; B saturates to int32.",
          unit="vector", footprint=M.fp_bnadapt, cycles=M.cy_bnadapt),
    Instr("EXPUPD", 26, "compute", (
        _x("xaddr", "the exponent table T"),
        Field("count", 16, doc="R: tensors (exponent registers) in the table"),
        Field("calm", 8, doc="M: calm steps (largest |q| < 64) before an exponent gets finer"),
    ), "Dynamic fixed point: move every exponent by the step's statistics "
       "(docs/numerics.md). Table layout, R words per row: E[r] = X[T+r] (current "
       "exponent), P[r] = X[T+R+r] (previous), C[r] = X[T+2R+r] (calm steps), "
       "S[r] = X[T+3R+2r], Q[r] = X[T+3R+2r+1] (saturations, max |q| of this step), "
       "S'[r], Q'[r] = X[T+5R+2r], X[T+5R+2r+1] (the last step's), lo[r] = X[T+7R+r], "
       "hi[r] = X[T+8R+r], thr[r] = X[T+9R+r]. Per r: P = E; S' = S, Q' = Q; S = Q = 0; "
       "if S' > thr: E += 1, C = 0; elif Q' < 64: C += 1, and if C >= M: E -= 1, C = 0; "
       "else C = 0; then E = min(max(E, lo), hi). 4 + ceil(R / lanes) cycles.",
          unit="vector", footprint=M.fp_expupd, cycles=M.cy_count),
)

BY_NAME: dict[str, Instr] = {i.name: i for i in INSTRS}
BY_OPCODE: dict[int, Instr] = {i.opcode: i for i in INSTRS}

M.check_model(INSTRS)
for _i in INSTRS:
    assert sum(f.bits for f in _i.all_fields) <= WORD_BITS, _i.name
    assert len({f.name for f in _i.all_fields}) == len(_i.all_fields), _i.name

# the DMAs: instructions whose transfer goes through the shared DDR port
DMA: tuple[str, ...] = tuple(i.name for i in INSTRS if i.ddr_port)
