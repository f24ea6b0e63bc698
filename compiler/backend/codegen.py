"""Instruction selection: loop IR + memory plan -> instruction words.

Each nest is walked in its loop order; per output tile the group is
``loads, MAC..., RQ, ST`` (or the vector-op equivalent).  Parameters are always read and
written through their mask view with channel-bank DMAs (LDCH/STCH) when a channel index
table applies, so pruned channels are never touched.

Double buffering: consecutive tiles alternate between two halves of every buffer region
(inputs by load step, accumulators and results by output tile), so the load queue fills
one half while the compute queue works on the other and the store queue drains the
previous result.  The dependency tokens that make this safe are derived per instruction
from its footprint by tokens.TokenPlanner (which also inserts SYNC where a load must
wait for a store).
"""
from __future__ import annotations

import itertools

from edgec.isa.encoding import encode_all, invalid_field
from edgec.isa.errors import EdgecError
from edgec.isa.machine import BUFFER_ID, PATTERN_ID
from edgec.isa.table import BY_NAME, WORD_BYTES
from edgec.isa.target import Target

from ..ir.graph import Graph
from ..ir.loops import LoopNest
from ..ir.ops import ACT_BWD, ELTWISE, MAC_BASE, MAC_OPS, REGISTRY as OP
from ..passes.dynfmt import CALM_STEPS, Registers, master_bound
from .memory import MemoryPlan, Symbol
from .tilefit import (bias_grad_fits, copies, gate_fits, geometry, group_rule_error, sgd_fits,
                      sgd_geometry, tile_fits, tile_words)
from .tokens import QUEUE, TokenPlanner, footprint

IBUF, WBUF, ABUF, XBUF = (BUFFER_ID[b] for b in ("IBUF", "WBUF", "ABUF", "XBUF"))
FP, EB, WG = (PATTERN_ID[p] for p in ("FP", "EB", "WG"))
_QUEUE_OF = {name: QUEUE[ins.queue] for name, ins in BY_NAME.items()}


class Emitter:
    def __init__(self, g: Graph, mem: MemoryPlan, tg: Target, regs: Registers | None = None):
        self.g, self.mem, self.tg, self.regs = g, mem, tg, regs
        # per instruction: name, dep bits, fields (encoded all at once by finish())
        self.names: list[str] = []
        self.deps: list[int] = []
        self.fields: list[dict] = []
        self.origin: list[str] = []     # per instruction: the layer/op it implements
        self.code = b""                 # the encoded words, after finish()
        self.where = ""
        self.starts: list[tuple[int, int]] = []   # (first instruction, node) of each nest
        self.producer = {o: n for n in g.nodes for o in n.outputs}
        self.tokens = TokenPlanner(self._patch)

    def _patch(self, i: int, bits: int) -> None:
        self.deps[i] |= bits

    def _append(self, name: str, dep: int, f: dict) -> None:
        self.names.append(name)
        self.deps.append(dep)
        self.fields.append(f)
        self.origin.append(self.where)

    def finish(self) -> None:
        """Encode every instruction into `code`; a field the machine would refuse (or that
        does not fit its bits) is an error "node K (...): instruction I (NAME): ..."."""
        for i, (name, f) in enumerate(zip(self.names, self.fields)):
            bad = invalid_field(name, f)
            if bad is not None:
                raise EdgecError(f"{self._who(i)}: instruction {i} ({name}): {bad}")
        try:
            self.code = encode_all(self.names, self.deps, self.fields)
        except EdgecError as e:
            i = getattr(e, "index", None)
            if i is None:
                raise
            raise EdgecError(f"{self._who(i)}: instruction {i}: {e}") from None

    def _who(self, i: int) -> str:
        """The node (or prologue / epilogue) instruction i implements."""
        k = next((k for first, k in reversed(self.starts) if first <= i), None)
        if k is None or self.origin[i] in ("exponents", "epilogue"):
            return self.origin[i] or "prologue"
        return f"node {k} ({self.origin[i]})"

    @property
    def words(self) -> list[bytes]:
        c = self.code
        return [c[i:i + WORD_BYTES] for i in range(0, len(c), WORD_BYTES)]

    def emit(self, name: str, sym: Symbol | None = None, rows=None, **f) -> None:
        """Append one instruction; its dep bits come from the token planner (`sym`: the
        DDR tensor a DMA moves; `rows`: its footprint in that tensor when a channel
        table hides the bytes, see tokens.footprint)."""
        tok, q = self.tokens, _QUEUE_OF[name]
        acc = footprint(name, f, sym, rows)
        need = tok.conflicts(q, acc)
        far = 2 - q
        if q != 1 and far in need:         # load <-> store: through the compute queue
            j = need.pop(far)
            c = tok.through_compute(far, j)
            if c is None:
                c = len(self.names)
                self._append("SYNC", tok.commit(c, 1, {far: j}, []), {})
            need[1] = max(need.get(1, -1), c)
        self._append(name, tok.commit(len(self.names), q, need, acc), f)

    # ---- DMA helpers ----
    def box(self, load: bool, buf: int, baddr: int, sym: Symbol, start, ext, full=None):
        """Dense box of a row-major tensor (shape padded to 4-D with trailing 1s)."""
        full = full or sym.shape
        _, d1, d2, d3 = (*full, 1, 1, 1)[:4]
        a0, a1, a2, a3 = (*start, 0, 0, 0)[:4]
        e0, e1, e2, e3 = (*ext, 1, 1, 1)[:4]
        t2 = d3
        t1 = t2 * d2
        t0 = t1 * d1
        es = 1 if sym.dtype == "i8" else 4
        self.emit("LD" if load else "ST", sym, buf=buf, baddr=baddr,
                  ddr=sym.addr + es * (t0 * a0 + t1 * a1 + t2 * a2 + a3),
                  esize=es, n0=e0, n1=e1, n2=e2, n3=e3,
                  s0=t0 if e0 > 1 else 0, s1=t1 if e1 > 1 else 0,
                  s2=t2 if e2 > 1 else 0, s3=1 if e3 > 1 else 0)

    def view(self, load: bool, buf: int, baddr: int, sym: Symbol, va: dict,
             r0: int, rt: int, b0: int, bt: int):
        """Rows [r0, r0+rt) and dim-1 blocks [b0, b0+bt) of a parameter's mask view."""
        full = sym.shape
        row = 1
        for d in full[1:]:
            row *= d
        inner = row // full[1] * (va["in_block"] if va["in_idx"] is not None else 1) \
            if len(full) > 1 else 1
        es = 1 if sym.dtype == "i8" else 4
        f = dict(buf=buf, baddr=baddr, esize=es, n0=rt, n1=bt, n2=inner, n3=1,
                 s0=row, s1=inner, s2=1, s3=0)
        ddr, gather = sym.addr, 0
        if va["out_tab"]:
            gather |= 1
            f["tab0"] = self.mem.symbols[f"tab:{va['out_tab']}"].addr + 4 * r0
        else:
            ddr += es * r0 * row
        if va["in_tab"] and va["in_idx"] is not None:
            gather |= 2
            f["tab1"] = self.mem.symbols[f"tab:{va['in_tab']}"].addr + 4 * b0
        else:
            ddr += es * b0 * inner
        name = ("LD" if load else "ST") + ("CH" if gather else "")
        rows = None                     # the DDR footprint when a table hides the bytes
        if gather & 1:                  # rows [r0, r0+rt) of the table's index space
            rows = (("tab", va["out_tab"]), r0, r0 + rt)
        elif gather:                    # whole rows r0 .. r0+rt-1, columns via the table
            rows = (None, sym.addr + es * r0 * row, sym.addr + es * (r0 + rt) * row)
        if gather:
            f["gather"] = gather
        self.emit(name, sym, rows, ddr=ddr, **f)

    def dyn(self, out: str, *operands: str) -> dict:
        """Fields of a dynamic-format RQ/VADD: exponent addresses of the result and
        operands (numerics.md section 8) and its statistics; {} in a static program."""
        R = self.regs
        if R is None:
            return {}
        f = {"dyn": 1, "xo": R.of[out]}
        for k, v in zip(("xa", "xb"), operands):
            f[k] = R.of[v]
        return {**f, **self.stat(out)}

    def dclamp(self, n, value: str) -> dict:
        """Fields of a dynamic clamp (a Hardtanh/ReLU6 of a dynamic program, numerics.md
        section 8): its bounds follow the exponent of ``value``; {} for a fixed clamp."""
        if self.regs is None or "dclamp" not in n.attrs:
            return {}
        clo, chi, ce = n.attrs["dclamp"]
        return {"dcl": 1, "clo": clo, "chi": chi, "ce": ce, "xo": self.regs.of[value]}

    def stat(self, out: str) -> dict:
        R = self.regs
        if R is None or out not in R.stats:
            return {}
        return {"st": 1, "xs": R.stat_addr(R.of[out])}

    def weight_view(self, operand: str) -> tuple[Symbol, dict]:
        p = self.producer.get(operand)
        if p is not None and p.op == "wview":
            return self.mem.of_value[p.inputs[0]], p.attrs
        return self.mem.of_value[operand], {"out_idx": None, "in_idx": None, "in_block": 1,
                                           "out_tab": None, "in_tab": None}


def _tiles(nest: LoopNest, dims):
    """Tile starts of `dims` in nest order: yields dicts dim -> (start, size)."""
    ranges = [[(s, min(nest.tiles[d], nest.dims[d] - s))
               for s in range(0, nest.dims[d], nest.tiles[d])] for d in dims]
    for combo in itertools.product(*ranges):
        yield dict(zip(dims, combo))


def _rq_index(full_shape, start, ext) -> dict:
    shape = list(full_shape) + [1] * (4 - len(full_shape))
    start = list(start) + [0] * (4 - len(start))
    strides = [1, 1, 1, 1]
    for d in (2, 1, 0):
        strides[d] = strides[d + 1] * shape[d + 1]
    ext = list(ext) + [1] * (4 - len(ext))
    return dict(gbase=sum(s * o for s, o in zip(strides, start)),
                g0=strides[0], g1=strides[1], g2=strides[2], g3=strides[3],
                n0=ext[0], n1=ext[1], n2=ext[2], n3=ext[3])


def _mac_nest(em: Emitter, nest: LoopNest, n) -> None:
    g, mem = em.g, em.mem
    G = geometry(g, n)
    kk = G["kh"] * G["kw"]
    Cg, Og = G["C"] // G["G"], G["O"] // G["G"]
    kind = OP[n.op].mac.lower()
    out = mem.of_value[n.outputs[0]]
    a = n.attrs
    par = list(nest.order[:-1]) if kind != "wg" else list(nest.order[:-2])
    red = [d for d in nest.order if d not in par]
    geo = dict(kh=G["kh"], kw=G["kw"], sh=G["sh"], sw=G["sw"], ph=G["ph"], pw=G["pw"])
    x4 = (G["N"], G["C"], G["H"], G["W"])
    y4 = (G["N"], G["O"], G["OH"], G["OW"])
    # ping-pong halves: IBUF [in0 | in1 | out0 | out1], WBUF [in0 | in1], ABUF [acc0 | acc1];
    # inputs alternate by load step, the accumulator and int8 result by output tile
    # (k = 1 copy when the tile does not fit twice: no overlap, same program)
    base = MAC_BASE[OP[n.op].mac]
    broken = group_rule_error(G, nest.tiles)       # the channel runs below rely on it
    if broken:
        raise EdgecError(f"{em.where}: nest {nest.node} ({n.op}): {broken}")
    words = tile_words(base, G, nest.tiles)
    k = copies(lambda t, c: tile_fits(base, G, t, em.tg, c), nest.tiles)
    xin, xout = words["ibuf"]
    win, cw = words["wbuf"][0], words["abuf"][1]
    blk = nest.unit.get("ci", 1)
    if kind != "wg":
        wsym, wva = em.weight_view(n.inputs[1])
    if kind == "fp" and len(n.inputs) == 3:
        bsym, bva = em.weight_view(n.inputs[2])
    step = 0
    for o, pt in enumerate(_tiles(nest, par)):
        cacc, obase = (o % k) * cw, k * xin + (o % k) * xout
        for rt_i, rt in enumerate(_tiles(nest, red)):
            t = {**pt, **rt}
            ia, wa = (step % k) * xin, (step % k) * win
            step += 1
            n0, nt = t["n"]
            g0, gt = t["g"]
            co0, cot = t["co"]
            ci0, cit = t["ci"]
            # the group rule: with several groups in a tile (gt > 1), co/ci tiles are
            # whole groups, so the tile's channels are one run from group g0 on
            xc0, xct = g0 * Cg + ci0, gt * cit          # input channels of the tile
            yc0, yct = g0 * Og + co0, gt * cot          # output channels (= weight rows)
            mac = dict(n=nt, ci=cit, co=cot, g=gt, xw=G["W"], yw=G["OW"], **geo, xw0=0, yw0=0,
                       caddr=cacc, acc=int(rt_i > 0))
            if kind == "fp":
                oh0, oht = t["oh"]
                r0 = max(0, oh0 * G["sh"] - G["ph"])
                r1 = min(G["H"], (oh0 + oht - 1) * G["sh"] - G["ph"] + G["kh"])
                if rt_i == 0 and len(n.inputs) == 3:   # bias broadcast into the accumulator
                    _bias_init(em, bsym, bva, yc0, yct, nt, oht * G["OW"], cacc)
                em.box(True, IBUF, ia, mem.of_value[n.inputs[0]], (n0, xc0, r0, 0),
                       (nt, xct, r1 - r0, G["W"]), x4)
                em.view(True, WBUF, wa, wsym, wva, yc0, yct, ci0 // blk, cit // blk)
                em.emit("MAC", pattern=FP, abuf=IBUF, aaddr=ia, bbuf=WBUF, baddr=wa,
                        xh=r1 - r0, yh=oht, xh0=r0, yh0=oh0,
                        **dict(mac, acc=int(rt_i > 0 or len(n.inputs) == 3)))
            elif kind == "eb":
                i0, iht = t["ih"]
                y0 = max(0, -(-(i0 + G["ph"] - G["kh"] + 1) // G["sh"]))
                y1 = min(G["OH"], (i0 + iht - 1 + G["ph"]) // G["sh"] + 1)
                if y1 > y0:
                    em.box(True, IBUF, ia, mem.of_value[n.inputs[0]], (n0, yc0, y0, 0),
                           (nt, yct, y1 - y0, G["OW"]), y4)
                    em.view(True, WBUF, wa, wsym, wva, yc0, yct, ci0 // blk, cit // blk)
                em.emit("MAC", pattern=EB, abuf=IBUF, aaddr=ia, bbuf=WBUF, baddr=wa,
                        xh=iht, yh=max(1, y1 - y0), xh0=i0,
                        yh0=y0 if y1 > y0 else G["OH"] + G["kh"] + i0, **mac)
            else:   # wg
                oh0, oht = t["oh"]
                r0 = max(0, oh0 * G["sh"] - G["ph"])
                r1 = min(G["H"], (oh0 + oht - 1) * G["sh"] - G["ph"] + G["kh"])
                em.box(True, WBUF, wa, mem.of_value[n.inputs[0]], (n0, yc0, oh0, 0),
                       (nt, yct, oht, G["OW"]), y4)
                em.box(True, IBUF, ia, mem.of_value[n.inputs[1]], (n0, xc0, r0, 0),
                       (nt, xct, r1 - r0, G["W"]), x4)
                em.emit("MAC", pattern=WG, abuf=WBUF, aaddr=wa, bbuf=IBUF, baddr=ia,
                        xh=r1 - r0, yh=oht, xh0=r0, yh0=oh0, **mac)
        # requantize the finished accumulator tile and store it
        if kind == "fp":
            oh0, oht = pt["oh"]
            full, start, ext = y4, (n0, yc0, oh0, 0), (nt, yct, oht, G["OW"])
        elif kind == "eb":
            i0, iht = pt["ih"]
            full, start, ext = x4, (n0, xc0, i0, 0), (nt, xct, iht, G["W"])
        else:
            full, start, ext = (G["O"], Cg, kk), (yc0, ci0, 0), (yct, cit, kk)
        idx = _rq_index(full, start, ext)
        lo, hi = a.get("clamp", (-127, 127))
        em.emit("RQ", saddr=cacc, dbuf=IBUF, daddr=obase, shift=a["shift"],
                mode=int(kind != "fp"), lo=lo, hi=hi, tid=a.get("tid", 0), **idx,
                **{**em.dyn(n.outputs[0], *n.inputs[:2]), **em.dclamp(n, n.outputs[0])})
        em.box(False, IBUF, obase, out, start, ext, full)


def _bias_init(em: Emitter, bsym: Symbol, bva: dict, co0: int, cot: int, nt: int, hw: int,
               baddr: int):
    f = dict(buf=ABUF, baddr=baddr, esize=4, n0=nt, n1=cot, n2=hw, n3=1, s0=0, s1=1, s2=0, s3=0)
    if bva["out_tab"]:
        em.emit("LDCH", bsym, (("tab", bva["out_tab"]), co0, co0 + cot), ddr=bsym.addr, gather=2,
                tab1=em.mem.symbols[f"tab:{bva['out_tab']}"].addr + 4 * co0, **f)
    else:
        em.emit("LD", bsym, ddr=bsym.addr + 4 * co0, **f)


def _flat(em: Emitter, load: bool, buf: int, baddr: int, sym: Symbol, e0: int, et: int):
    """A contiguous run of et elements starting at flat element e0."""
    es = 1 if sym.dtype == "i8" else 4
    em.emit("LD" if load else "ST", sym, buf=buf, baddr=baddr, ddr=sym.addr + es * e0, esize=es,
            n0=1, n1=1, n2=1, n3=et, s3=1)


def _eltwise_nest(em: Emitter, nest: LoopNest, n) -> None:
    """VADD (relu, hardtanh, add) / VMASK (their backward) over flat tiles."""
    mem = em.mem
    out = mem.of_value[n.outputs[0]]
    a = n.attrs
    src_a = mem.of_value[n.inputs[0]]
    src_b = mem.of_value[n.inputs[-1]]
    two = len(n.inputs) == 2
    E = nest.tiles["e"]             # IBUF [a0 | a1 | d0 | d1], WBUF [b0 | b1]
    k = 2 if 4 * E <= em.tg.ibuf and 2 * E <= em.tg.wbuf else 1
    for i, t in enumerate(_tiles(nest, ["e"])):
        e0, et = t["e"]
        h, d = (i % k) * E, (k + i % k) * E
        _flat(em, True, IBUF, h, src_a, e0, et)
        if two:
            _flat(em, True, WBUF, h, src_b, e0, et)
        if n.op in ACT_BWD:
            lo, hi = a["pass_range"]
            em.emit("VMASK", abuf=IBUF, aaddr=h, bbuf=WBUF, baddr=h, dbuf=IBUF, daddr=d,
                    count=et, lo=lo, hi=hi, **em.dclamp(n, n.inputs[1]))
        else:
            lo, hi = a["clamp"]
            em.emit("VADD", abuf=IBUF, aaddr=h, bbuf=WBUF, baddr=h, dbuf=IBUF, daddr=d,
                    count=et, nb=int(two), sa=a.get("sa", 0), sb=a.get("sb", 0),
                    shift=a.get("shift", 0), mode=int(bool(a.get("grad"))),
                    tid=a.get("tid", 0), gbase=e0, lo=lo, hi=hi,
                    **{**(em.dyn(n.outputs[0], *n.inputs) if n.op == "add" else {}),
                       **em.dclamp(n, n.outputs[0])})
        _flat(em, False, IBUF, d, out, e0, et)


def _pool_nest(em: Emitter, nest: LoopNest, n) -> None:
    """MAXP / MAXPB over tiles of whole planes."""
    mem, V = em.mem, em.g.values
    out = mem.of_value[n.outputs[0]]
    a = n.attrs
    x = mem.of_value[n.inputs[0] if n.op == "maxpool" else n.inputs[1]]
    _, _, H, W = x.shape
    oh, ow = (out.shape[2:] if n.op == "maxpool" else V[n.inputs[0]].shape[2:])
    geo = dict(h=H, w=W, kh=a["kernel"][0], kw=a["kernel"][1], sh=a["stride"][0],
               sw=a["stride"][1], ph=a["pad"][0], pw=a["pad"][1])
    P = nest.tiles["p"]             # IBUF [x0 | x1 | d0 | d1], WBUF [dy0 | dy1]
    dw = P * (oh * ow if n.op == "maxpool" else H * W)
    k = 2 if 2 * (P * H * W + dw) <= em.tg.ibuf and 2 * P * oh * ow <= em.tg.wbuf else 1
    for i, t in enumerate(_tiles(nest, ["p"])):
        p0, pt = t["p"]
        h, d = (i % k) * P * H * W, k * P * H * W + (i % k) * dw
        em.emit("LD", x, buf=IBUF, baddr=h, ddr=x.addr + p0 * H * W, esize=1, n0=1, n1=1,
                n2=pt, n3=H * W, s2=H * W, s3=1)
        if n.op == "maxpool":
            em.emit("MAXP", sbuf=IBUF, saddr=h, dbuf=IBUF, daddr=d, planes=pt, **geo)
            em.emit("ST", out, buf=IBUF, baddr=d, ddr=out.addr + p0 * oh * ow,
                    esize=1, n0=1, n1=1, n2=pt, n3=oh * ow, s2=oh * ow, s3=1)
        else:
            dy = mem.of_value[n.inputs[0]]
            gh = (i % k) * P * oh * ow
            em.emit("LD", dy, buf=WBUF, baddr=gh, ddr=dy.addr + p0 * oh * ow, esize=1,
                    n0=1, n1=1, n2=pt, n3=oh * ow, s2=oh * ow, s3=1)
            em.emit("MAXPB", xbuf=IBUF, xaddr=h, gbuf=WBUF, gaddr=gh, dbuf=IBUF,
                    daddr=d, planes=pt, **geo)
            em.emit("ST", out, buf=IBUF, baddr=d, ddr=out.addr + p0 * H * W, esize=1,
                    n0=1, n1=1, n2=pt, n3=H * W, s2=H * W, s3=1)


def _channel_copy_nest(em: Emitter, nest: LoopNest, n) -> None:
    """concat / slice: per tile of batch x output channels, each operand's part of it is
    one LD into IBUF and one ST at its channel offset in the output (both operands have
    one format: a copy, DMA only; IBUF [t0 | t1] alternates by tile)."""
    mem = em.mem
    out = mem.of_value[n.outputs[0]]
    rest = tuple(out.shape[2:])
    hw = 1
    for d in rest:
        hw *= d
    if n.op == "concat":        # (operand, its first output channel, first source channel)
        parts, off = [], 0
        for v in n.inputs:
            parts.append((mem.of_value[v], off, 0, em.g.values[v].shape[1]))
            off += em.g.values[v].shape[1]
    else:
        c0, c1 = int(n.attrs["c0"]), int(n.attrs["c1"])
        parts = [(mem.of_value[n.inputs[0]], 0, c0, c1 - c0)]
    T = nest.tiles["n"] * nest.tiles["c"] * hw
    k = 2 if 2 * T <= em.tg.ibuf else 1
    zeros = (0,) * len(rest)
    for i, t in enumerate(_tiles(nest, ["n", "c"])):
        (n0, nt), (t0, tc) = t["n"], t["c"]
        h = (i % k) * T
        for sym, off, src0, width in parts:
            lo, hi = max(t0, off), min(t0 + tc, off + width)
            if lo >= hi:
                continue
            ext = (nt, hi - lo, *rest)
            em.box(True, IBUF, h, sym, (n0, src0 + lo - off, *zeros), ext)
            em.box(False, IBUF, h, out, (n0, lo, *zeros), ext)
            h += nt * (hi - lo) * hw


def _gate_nest(em: Emitter, nest: LoopNest, n) -> None:
    """chmul / chmul_ds over tiles of whole (n, c) planes: LD A (x, or dy) and B (the gate
    s, one value per plane, or x), VMULC (mode 0: A * B[p]; mode 1: plane dots) into ABUF,
    RQ (chmul_ds and an error chmul: stochastic) into IBUF, ST.  IBUF [a0 | a1 | d0 | d1],
    WBUF [b0 | b1], ABUF [c0 | c1]."""
    mem = em.mem
    a = n.attrs
    ds = n.op == "chmul_ds"
    src_a, src_b = (mem.of_value[v] for v in n.inputs)
    out = mem.of_value[n.outputs[0]]
    shape = src_a.shape
    hw = 1
    for d in shape[2:]:
        hw *= d
    P = nest.tiles["p"]
    k = 2 if gate_fits(P, hw, ds, em.tg, 2) else 1
    wide, per_out = P * hw, (1 if ds else hw)
    for i, t in enumerate(_tiles(nest, ["p"])):
        p0, pt = t["p"]
        h, d = (i % k) * wide, k * wide + (i % k) * P * per_out
        wb, cb = (i % k) * P * (hw if ds else 1), (i % k) * P * per_out
        _flat(em, True, IBUF, h, src_a, p0 * hw, pt * hw)
        _flat(em, True, WBUF, wb, src_b, p0 * (hw if ds else 1), pt * (hw if ds else 1))
        em.emit("VMULC", mode=int(ds), abuf=IBUF, aaddr=h, bbuf=WBUF, baddr=wb, caddr=cb,
                planes=pt, hw=hw)
        em.emit("RQ", saddr=cb, dbuf=IBUF, daddr=d, shift=a["shift"],
                mode=int(ds or bool(a.get("grad"))), lo=-127, hi=127, tid=a.get("tid", 0),
                **_rq_index((shape[0] * shape[1], per_out), (p0, 0), (pt, per_out)),
                **em.dyn(n.outputs[0], *n.inputs))
        _flat(em, False, IBUF, d, out, p0 * per_out, pt * per_out)


def _bias_grad_nest(em: Emitter, nest: LoopNest, n) -> None:
    """RSUM over batch tiles per channel tile, then RQ of the sums."""
    mem = em.mem
    out = mem.of_value[n.outputs[0]]
    a = n.attrs
    dy = mem.of_value[n.inputs[0]]
    N, C = dy.shape[:2]
    hw = 1
    for d in dy.shape[2:]:
        hw *= d
    IN = nest.tiles["n"] * nest.tiles["c"] * hw    # IBUF [dy0 | dy1 | d0 | d1]
    k = copies(lambda t, c: bias_grad_fits(t, hw, em.tg, c), nest.tiles)
    step = 0
    for o, ct in enumerate(_tiles(nest, ["c"])):
        c0, cn = ct["c"]
        for i, nt_ in enumerate(_tiles(nest, ["n"])):
            n0, nn = nt_["n"]
            h = (step % k) * IN
            step += 1
            em.box(True, IBUF, h, dy, (n0, c0, 0), (nn, cn, hw), (N, C, hw))
            em.emit("RSUM", sbuf=IBUF, saddr=h, daddr=0, n=nn, c=cn, hw=hw, acc=int(i > 0))
        d = k * IN + (o % k) * nest.tiles["c"]
        em.emit("RQ", saddr=0, dbuf=IBUF, daddr=d, shift=a["shift"], mode=1, lo=-127,
                hi=127, tid=a["tid"], **_rq_index((C,), (c0,), (cn,)),
                **em.dyn(n.outputs[0], n.inputs[0]))
        em.box(False, IBUF, d, out, (c0,), (cn,))


def _bn_adapt_nest(em: Emitter, nest: LoopNest, n) -> None:
    """CSTAT over batch tiles per channel tile, then BNADAPT on the constants' views."""
    mem = em.mem
    a = n.attrs
    x, bsym, qsym = (mem.of_value[v] for v in n.inputs)
    N, C = x.shape[:2]
    hw = 1
    for d in x.shape[2:]:
        hw *= d
    views = [{"out_idx": a["out_idx"], "in_idx": None, "in_block": 1, "out_tab": tab,
              "in_tab": None} for tab in (a["b_tab"], a["out_tab"])]
    for ct in _tiles(nest, ["c"]):
        c0, cn = ct["c"]
        for i, nt_ in enumerate(_tiles(nest, ["n"])):
            n0, nn = nt_["n"]
            em.box(True, IBUF, 0, x, (n0, c0, 0), (nn, cn, hw), (N, C, hw))
            em.emit("CSTAT", sbuf=IBUF, saddr=0, daddr=0, n=nn, c=cn, hw=hw,
                    acc=int(i > 0))
        for load in (True, False):
            em.view(load, ABUF, 2 * cn, bsym, views[0], c0, cn, 0, 1)
            em.view(load, WBUF, 0, qsym, views[1], c0, cn, 0, 1)
            if load:
                em.emit("BNADAPT", saddr=0, baddr=2 * cn, qbuf=WBUF, qaddr=0, c=cn,
                        cnt=N * hw, mode=a["mode"], d=a["d"], p=a["p"], eps=a["eps"],
                        m=a["m"])


def _loss_nest(em: Emitter, nest: LoopNest, n) -> None:
    """LOSSG (labels) or LOSST (a teacher's logits) on whole logits."""
    mem = em.mem
    out = mem.of_value[n.outputs[0]]
    a = n.attrs
    if a.get("target", "labels") != "labels":
        emit_teacher_loss(em, mem, n)
    else:
        z, lab = mem.of_value[n.inputs[0]], mem.of_value[n.inputs[1]]
        lut = mem.symbols[a["lut"]]
        N, K = z.shape
        em.box(True, IBUF, 0, z, (0, 0), (N, K))
        em.box(True, ABUF, 0, lab, (0,), (N,))
        em.box(True, ABUF, N, lut, (0,), lut.shape)
        em.emit("LOSSG", zbuf=IBUF, zaddr=0, laddr=0, lutaddr=N, dbuf=IBUF, daddr=N * K,
                n=N, k=K, rmul=a["rmul"], shift=a["shift"], **_lut_select(em, n))
        em.box(False, IBUF, N * K, out, (0, 0), (N, K))


def _sgd_nest(em: Emitter, nest: LoopNest, n) -> None:
    """SGD through the parameter's mask view: master, momentum, gradient, copy."""
    g, mem = em.g, em.mem
    a = n.attrs
    psym = mem.of_value[n.inputs[0]]
    msym = mem.of_value[n.inputs[1]]
    ng = bool(a.get("ng"))
    grad = None if ng else mem.of_value[n.inputs[2]]
    rows, blocks, inner = sgd_geometry(g, n)
    wide = psym.dtype == "i32"
    tile = nest.tiles["r"] * nest.tiles["b"] * inner
    # halves: ABUF [m0 | m1 | wide copy0 | copy1 | mom0 | mom1], IBUF [g0 | g1],
    # WBUF [copy0 | copy1]; mom (momentum buffer V): loaded and stored like the master
    mom = bool(a.get("mom"))
    vsym = mem.of_value[n.inputs[3]] if mom else None
    k = copies(lambda t, c: sgd_fits(t, inner, em.tg, c, mom), nest.tiles)
    for i, t in enumerate(_tiles(nest, list(nest.order))):
        (r0, rt), (b0, bt) = t["r"], t["b"]
        h = (i % k) * tile
        cbuf, caddr = (ABUF, k * tile + h) if wide else (WBUF, h)
        em.view(True, ABUF, h, msym, a, r0, rt, b0, bt)
        vaddr = 2 * k * tile + h
        if mom:
            em.view(True, ABUF, vaddr, vsym, a, r0, rt, b0, bt)
        if not ng:
            em.box(True, IBUF, h, grad, (r0, b0 * inner), (rt, bt * inner),
                   (rows, blocks * inner))
        momf = dict(mom=1, vaddr=vaddr, mumul=a["mumul"], mushift=a["mushift"],
                    wdmul=a["wdmul"], wdshift=a["wdshift"]) if mom else {}
        em.emit("SGD", maddr=h, gbuf=IBUF, gaddr=h, dbuf=cbuf, daddr=caddr,
                count=rt * bt * inner, lrmul=a["lrmul"], lrshift=a["lrshift"], cshift=a["cshift"],
                cbits=a["cbits"], **_sgd_dyn(em, n), **momf)
        em.view(False, ABUF, h, msym, a, r0, rt, b0, bt)
        if mom:
            em.view(False, ABUF, vaddr, vsym, a, r0, rt, b0, bt)
        em.view(False, cbuf, caddr, psym, a, r0, rt, b0, bt)


def _lut_select(em: Emitter, n) -> dict:
    """LOSSG/LOSST fields choosing the exp table by the logits' current exponent."""
    a = n.attrs
    if em.regs is None or "lut_lo" not in a:
        return {}
    return dict(dyn=1, xz=em.regs.of[n.inputs[0]], lutlo=a["lut_lo"], nlut=a["nlut"])


def _sgd_dyn(em: Emitter, n) -> dict:
    """SGD fields of a dynamic-format update (numerics.md section 8)."""
    R, V, a = em.regs, em.g.values, n.attrs
    if R is None:
        return {"ng": 1} if a.get("ng") else {}
    e_m = V[n.inputs[1]].exp
    c = (*R.regs(n.inputs[0]), 0)[:2]
    f = dict(dyn=1, xc=c[0], xd=c[1], emas=e_m,
             mbound=master_bound(a["cbits"], sum(R.hi[r] for r in R.regs(n.inputs[0])), e_m),
             **em.stat(n.outputs[0]))
    if a.get("ng"):
        return {**f, "ng": 1}
    grad = n.inputs[2]
    return {**f, "xg": R.count + R.of[grad], "lrbase": a["lrshift"] + V[grad].exp}


def emit_teacher_loss(em: Emitter, mem: MemoryPlan, n) -> None:
    """loss_grad with a teacher target (pseudo / kd): one LOSST on whole logits."""
    a = n.attrs
    z, t = mem.of_value[n.inputs[0]], mem.of_value[n.inputs[1]]
    out = mem.of_value[n.outputs[0]]
    N, K = z.shape
    em.box(True, IBUF, 0, z, (0, 0), (N, K))
    em.box(True, IBUF, N * K, t, (0, 0), (N, K))
    lut = mem.symbols[a["lut"]]
    nl = lut.shape[0]
    em.box(True, ABUF, 0, lut, (0,), lut.shape)
    em.box(True, ABUF, nl, mem.symbols[a["tlut"]], (0,), (256,))
    em.emit("LOSST", zbuf=IBUF, zaddr=0, tbuf=IBUF, taddr=N * K, lutaddr=0, tlutaddr=nl,
            dbuf=IBUF, daddr=2 * N * K, n=N, k=K, rmul=a["rmul"], shift=a["shift"],
            kd=int(a["target"] == "kd"), thresh=a.get("thresh", 0), **_lut_select(em, n))
    em.box(False, IBUF, 2 * N * K, out, (0, 0), (N, K))


#: one lowering per materialised op (op registry stage ``codegen``): (emitter, nest, node)
LOWERING = {
    **{op: _mac_nest for op in sorted(MAC_OPS)},
    **{op: _eltwise_nest for op in sorted(ELTWISE)},
    "maxpool": _pool_nest, "maxpool_bwd": _pool_nest,
    "bias_grad": _bias_grad_nest,
    "bn_adapt": _bn_adapt_nest,
    "loss_grad": _loss_nest,
    "sgd": _sgd_nest,
    "concat": _channel_copy_nest, "slice": _channel_copy_nest,
    "chmul": _gate_nest, "chmul_ds": _gate_nest,
}


def generate(g: Graph, nests: list[LoopNest], mem: MemoryPlan, tg: Target,
             regs: Registers | None = None) -> Emitter:
    """The program; with `regs` (dynamic formats) it loads the exponent table into XBUF
    first, moves the exponents (EXPUPD) before the first update and stores the table
    last."""
    em = Emitter(g, mem, tg, regs)
    em.where = "prologue"
    em.emit("SEED", mem.symbols["rng_seed"], ddr=mem.symbols["rng_seed"].addr)
    if regs is not None:
        xtab = mem.symbols["xtab"]
        em.box(True, XBUF, 0, xtab, (0,), xtab.shape)
    moved = regs is None
    for nest in nests:
        n = g.nodes[nest.node]
        if not moved and n.op == "sgd":
            em.where = "exponents"
            em.emit("EXPUPD", xaddr=0, count=regs.count, calm=CALM_STEPS)
            moved = True
        em.where = f"{n.op} {n.layer or ''} {n.loc or ''}".strip()
        em.starts.append((len(em.names), nest.node))
        rule = LOWERING.get(n.op)
        if rule is None:
            raise EdgecError(f"{em.where}: no lowering for op {n.op!r}")
        rule(em, nest, n)
    em.where = "epilogue"
    if regs is not None:
        em.box(False, XBUF, 0, xtab, (0,), xtab.shape)
    em.emit("END")
    em.finish()
    return em
