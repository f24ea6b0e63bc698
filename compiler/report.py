"""Per-layer / per-pattern performance report of a program (like Arm Vela's summary).

    rep = program_report(program, target)          # a plain dict (JSON-serialisable)
    print(format_report(rep))
    plot_roofline(rep, "roofline.png")             # needs matplotlib

Every instruction is attributed, through the program's ``meta["origin"]`` (one
"op layer loc" string per instruction, written by codegen), to exactly one group
(layer, loc, pattern).  Patterns:

    FP      forward ops (conv, linear, relu, hardtanh, pool, add, BatchNorm lowerings, ...)
    EB      error back-propagation (conv_eb, linear_eb)
    WG      weight gradients (conv_wg, linear_wg)
    BWD     other backward ops (bias_grad, relu_bwd, maxpool_bwd, hardtanh_bwd, ...)
    LOSS    softmax cross-entropy gradient (loss_grad)
    UPDATE  SGD (sgd)
    OTHER   prologue / epilogue / instructions without an origin

Phases: forward = FP; backward = EB + WG + BWD + LOSS; update = UPDATE; other = OTHER.

Per group: instructions, MACs (MAC: n*yh*yw*kh*kw*ci*co*g), DDR bytes (LD/LDCH/ST/STCH
boxes: esize*n0*n1*n2*n3, as compiler/backend/stats.py counts them), index bytes (channel
index tables read by LDCH/STCH and the SEED word: DDR traffic beyond the boxes), modeled
cycles, MAC-array utilisation MACs / (cycles * rows * cols), the roofline bound
max(MACs / (rows * cols), (DDR bytes + index bytes) / DDR bytes per cycle) and
cycles / bound.  The bound of a phase or of the whole program is the SUM of its groups'
bounds (each group is one operator).

Cycles follow the emulator's timing model (per-instruction costs from isa/table.py, the
queues and tokens replayed by compiler/pipeline.py; tests check both equal the emulator's
counters):
the load, compute and store queues overlap, so a group's cycles are the cycles by which
its instructions extend the program's timeline (each instruction, in program order, is
charged max(0, its end - the latest end before it)); the groups' cycles sum to the
program's.  cycles_mac / cycles_dma / cycles_vector are each unit's busy cycles (they
overlap, so they sum to more than the cycles).  Work that overlaps the previous operator
costs its group nothing, so a group can come in under its own bound; the whole program
cannot beat max(MACs / array, bytes / bandwidth).
"""
from __future__ import annotations

import math

from edgec.isa.container import Program
from edgec.isa.encoding import decode_all
from edgec.isa.errors import EdgecError
from edgec.isa.machine import FieldError
from edgec.isa.table import BY_NAME
from edgec.isa.target import Target, mismatch

from .pipeline import replay

PATTERN_ORDER = ("FP", "EB", "WG", "BWD", "LOSS", "UPDATE", "OTHER")
PHASE_OF = {"FP": "forward", "EB": "backward", "WG": "backward", "BWD": "backward",
            "LOSS": "backward", "UPDATE": "update", "OTHER": "other"}
PHASES = ("forward", "backward", "update", "other", "overall")
_SUMS = ("instructions", "macs", "ddr_bytes", "index_bytes", "cycles", "cycles_mac",
         "cycles_dma", "cycles_vector", "bound")


def pattern_of(op: str) -> str:
    """The pattern of a graph op named in meta["origin"]."""
    if op in ("prologue", "epilogue", ""):
        return "OTHER"
    if op in ("sgd", "bn_adapt"):
        return "UPDATE"
    if op == "loss_grad":
        return "LOSS"
    if op.endswith("_eb"):
        return "EB"
    if op.endswith("_wg"):
        return "WG"
    if op.endswith(("_bwd", "_backward", "_grad")):
        return "BWD"
    return "FP"


def parse_origin(s) -> tuple[str, str, str]:
    """"op layer loc" -> (op, layer, loc); codegen writes f"{op} {layer or ''} {loc or ''}"
    stripped, so a missing layer leaves an empty middle field."""
    if not isinstance(s, str):
        return "", "", ""
    parts = s.split(" ")
    op = parts[0]
    layer = parts[1] if len(parts) > 1 else ""
    loc = " ".join(parts[2:]) if len(parts) > 2 else ""
    return op, layer, loc


def instruction_groups(program: Program) -> list[tuple[str, str, str]]:
    """(layer, loc, pattern) of every instruction, in program order.  Instructions the
    origin list does not cover (a program without one, e.g. from `edgec asm`) go to the
    OTHER group of layer "-"."""
    origin = program.meta.get("origin")
    if not isinstance(origin, list):
        origin = []
    out = []
    for i in range(program.n_instr):
        op, layer, loc = parse_origin(origin[i] if i < len(origin) else "")
        pat = pattern_of(op)
        if pat == "OTHER":
            layer = op or "-"
        out.append((layer or "-", loc, pat))
    return out


def instr_cost(name: str, f: dict, tg: Target, index: int = 0) -> dict:
    """Cycles (and the unit that spends them), MACs, DDR box bytes and index-table bytes
    of one instruction: its row of isa/table.py (Instr.unit, cycles, work; the formulas
    the emulator charges, isa/machine.py)."""
    ins = BY_NAME.get(name)
    if ins is None:
        raise EdgecError(f"instruction {index}: no cost model for {name}")
    try:
        cycles = ins.cycles(f, tg)
    except FieldError as e:
        raise EdgecError(f"instruction {index} ({name}): {e}; the emulator would trap") \
            from None
    macs, ddr_bytes, index_bytes = ins.work(f)
    return dict(unit=ins.unit, cycles=cycles, macs=macs, ddr_bytes=ddr_bytes,
                index_bytes=index_bytes)


_TILE_BUFFERS = ("IBUF", "WBUF", "ABUF")


def _note_buffers(peak: dict, accesses) -> None:
    """Raise each tile buffer's high-water mark (elements) to what `accesses` touch."""
    for a in accesses:
        if a.space in peak and a.hi is not None:
            peak[a.space] = max(peak[a.space], a.hi)


def _layer_channels(meta: dict) -> dict:
    """layer -> (kept, total) output channels: the total from the weight's shape in the
    program's parameter list, the kept ones from its mask (all when unmasked)."""
    mask = meta.get("mask") if isinstance(meta.get("mask"), dict) else {}
    out = {}
    for prm in meta.get("params") or []:
        name, shape = prm.get("name", ""), prm.get("shape") or []
        if name.endswith(".weight") and len(shape) >= 2:
            layer = name[:-len(".weight")]
            out[layer] = (len(mask.get(layer, range(shape[0]))), shape[0])
    return out


def _finish(d: dict, tg: Target) -> dict:
    """Derived metrics of a summed record (bound already summed or set)."""
    arr = tg.mac_rows * tg.mac_cols
    d["utilisation"] = d["macs"] / (d["cycles"] * arr) if d["cycles"] else 0.0
    d["cycles_over_bound"] = d["cycles"] / d["bound"] if d["bound"] else None
    return d


def _group_bound(d: dict, tg: Target) -> None:
    comp = d["macs"] / (tg.mac_rows * tg.mac_cols)
    mem = (d["ddr_bytes"] + d["index_bytes"]) / tg.ddr_bytes_per_cycle
    d["bound_compute"], d["bound_memory"] = comp, mem
    d["bound"] = max(comp, mem)
    d["bound_kind"] = "compute" if comp >= mem and comp > 0 else ("memory" if mem else "-")


def program_report(program: Program, target: Target, counters: dict | None = None) -> dict:
    """The per-(layer, pattern) performance summary of `program` on `target` (a dict that
    json.dumps accepts).  `counters`, if given (Machine.counters after a run), are
    recorded under "emulator" with whether they agree with the static totals."""
    if program.target_fp != target.fingerprint:
        raise EdgecError(mismatch(program, target))
    instrs = decode_all(program.code)
    keys = instruction_groups(program)
    origin = program.meta.get("origin") if isinstance(program.meta.get("origin"), list) \
        else []
    groups: dict[tuple, dict] = {}
    mnem: dict[str, int] = {}
    costs = [instr_cost(ins.name, f, target, i) for i, (ins, f) in enumerate(instrs)]
    ends = replay([ins.name for ins, _ in instrs], [f["dep"] for _, f in instrs],
                  [c["cycles"] for c in costs], target.ddr_latency)
    frontier = 0
    for i, ((ins, f), key, c, end) in enumerate(zip(instrs, keys, costs, ends)):
        share = max(0, end - frontier)      # cycles by which it extends the timeline
        frontier = max(frontier, end)
        g = groups.get(key)
        if g is None:
            g = groups[key] = dict(layer=key[0], loc=key[1], pattern=key[2],
                                   phase=PHASE_OF[key[2]], ops=[], first=i, tiles=0,
                                   buffer_peak={b: 0 for b in _TILE_BUFFERS},
                                   **{k: 0 for k in _SUMS if k != "bound"})
        op = parse_origin(origin[i] if i < len(origin) else "")[0] or "-"
        if op not in g["ops"]:
            g["ops"].append(op)
        g["instructions"] += 1
        g["macs"] += c["macs"]
        g["ddr_bytes"] += c["ddr_bytes"]
        g["index_bytes"] += c["index_bytes"]
        g["cycles"] += share
        g["cycles_" + c["unit"]] += c["cycles"]
        g["tiles"] += c["unit"] == "mac"
        _note_buffers(g["buffer_peak"], ins.footprint(f))
        mnem[ins.name] = mnem.get(ins.name, 0) + 1
    rows = sorted(groups.values(), key=lambda g: g["first"])
    channels = _layer_channels(program.meta)
    for g in rows:
        _group_bound(g, target)
        _finish(g, target)
        g["kept_channels"], g["total_channels"] = channels.get(g["layer"], (None, None))
    totals = {}
    for ph in PHASES:
        sel = [g for g in rows if ph == "overall" or g["phase"] == ph]
        t = {k: sum(g[k] for g in sel) for k in _SUMS}
        t["groups"] = len(sel)
        totals[ph] = _finish(t, target)
    rep = {
        "target": {"name": target.name, "mac_rows": target.mac_rows,
                   "buffers": {b: target.buffer_size(b) for b in _TILE_BUFFERS},
                   "mac_cols": target.mac_cols,
                   "ddr_bytes_per_cycle": target.ddr_bytes_per_cycle,
                   "ddr_latency": target.ddr_latency, "vector_lanes": target.vector_lanes},
        "program": {"instructions": program.n_instr, "code_bytes": len(program.code),
                    "data_bytes": len(program.data), "ddr_size": program.ddr_size,
                    "batch": program.meta.get("batch"), "mnemonics": mnem},
        "groups": rows,
        "totals": totals,
    }
    if counters is not None:
        o = totals["overall"]
        emu = {k: int(counters[k]) for k in ("instructions", "macs", "cycles",
                                             "ddr_read_bytes", "ddr_write_bytes")
               if k in counters}
        emu["ddr_bytes"] = emu.get("ddr_read_bytes", 0) + emu.get("ddr_write_bytes", 0)
        emu["agrees"] = (emu.get("cycles") == o["cycles"] and emu.get("macs") == o["macs"]
                         and emu.get("instructions") == o["instructions"]
                         and emu["ddr_bytes"] == o["ddr_bytes"] + o["index_bytes"])
        rep["emulator"] = emu
    return rep


# ---------------------------------------------------------------------------- printing

def _si(v) -> str:
    return f"{v:,}" if isinstance(v, int) else f"{v:,.0f}"


def _ratio(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def format_report(rep: dict) -> str:
    t, p, tot = rep["target"], rep["program"], rep["totals"]
    arr = t["mac_rows"] * t["mac_cols"]
    o = tot["overall"]
    lines = [
        f"Performance summary ({t['name']}: {t['mac_rows']}x{t['mac_cols']} MAC array, "
        f"DDR {t['ddr_bytes_per_cycle']} B/cycle + {t['ddr_latency']} cycles/transfer, "
        f"{t['vector_lanes']} vector lanes; overlapped load/compute/store queues)",
        "",
        f"{'Instructions':<40}{p['instructions']:>16,}",
        f"{'Batch':<40}{str(p.get('batch') or '-'):>16}",
        f"{'MACs':<40}{o['macs']:>16,}",
        f"{'DDR bytes (boxes)':<40}{o['ddr_bytes']:>16,}",
        f"{'DDR bytes (index tables, seed)':<40}{o['index_bytes']:>16,}",
        f"{'Cycles':<40}{o['cycles']:>16,}",
        f"{'  busy: MAC / DMA / vector':<40}{o['cycles_mac']:>16,} / {o['cycles_dma']:,} / "
        f"{o['cycles_vector']:,}",
        f"{'MAC array utilisation':<40}{100 * o['utilisation']:>15.2f}%",
        f"{'Roofline bound (sum over groups)':<40}{_si(o['bound']):>16}",
        f"{'Cycles / bound':<40}{_ratio(o['cycles_over_bound']):>16}",
        "",
    ]
    hdr = (f"{'Layer':<28} {'Pat':<6} {'Instr':>8} {'MACs':>15} {'DDR bytes':>13} "
           f"{'Cycles':>13} {'Util%':>6} {'Bound':>12} {'by':<3} {'Cyc/Bnd':>8}")
    lines += [hdr, "-" * len(hdr)]
    seen: dict[tuple, int] = {}
    for g in rep["groups"]:
        seen[g["layer"], g["pattern"]] = seen.get((g["layer"], g["pattern"]), 0) + 1
    for g in rep["groups"]:
        name = g["layer"]
        if seen[name, g["pattern"]] > 1 and g["loc"]:    # e.g. functional relus: by line
            name = f"{name}@{g['loc'].rsplit('/', 1)[-1]}"
        name = name if len(name) <= 28 else "..." + name[-25:]
        lines.append(f"{name:<28} {g['pattern']:<6} {g['instructions']:>8,} {g['macs']:>15,} "
                     f"{g['ddr_bytes'] + g['index_bytes']:>13,} {g['cycles']:>13,} "
                     f"{100 * g['utilisation']:>6.1f} {_si(g['bound']):>12} "
                     f"{g['bound_kind'][:3]:<3} {_ratio(g['cycles_over_bound']):>8}")
    lines += ["-" * len(hdr)]
    for ph in PHASES:
        d = tot[ph]
        if ph != "overall" and not d["instructions"]:
            continue
        share = 100 * d["cycles"] / o["cycles"] if o["cycles"] else 0.0
        lines.append(f"{'TOTAL ' + ph:<28} {'':<6} {d['instructions']:>8,} {d['macs']:>15,} "
                     f"{d['ddr_bytes'] + d['index_bytes']:>13,} {d['cycles']:>13,} "
                     f"{100 * d['utilisation']:>6.1f} {_si(d['bound']):>12} {'':<3} "
                     f"{_ratio(d['cycles_over_bound']):>8}  ({share:.1f}% of cycles)")
    lines.append(f"(Util% = MACs / (cycles x {arr}); Bound = max(MACs / {arr}, DDR bytes / "
                 f"{t['ddr_bytes_per_cycle']}) cycles; by = compute / memory bound)")
    emu = rep.get("emulator")
    if emu:
        lines.append(f"emulator run: {emu.get('cycles', 0):,} cycles, {emu.get('macs', 0):,} "
                     f"MACs, {emu['ddr_bytes']:,} DDR bytes: "
                     + ("agrees with the static model" if emu["agrees"]
                        else "DISAGREES with the static model"))
    return "\n".join(lines)


CSV_COLUMNS = ("layer", "loc", "ops", "pattern", "phase", "kept_channels", "total_channels",
               "tiles", "ibuf_pct", "wbuf_pct", "abuf_pct", "instructions", "ddr_bytes",
               "macs", "cycles", "cycles_pct", "utilisation_pct", "bound", "bound_kind",
               "cycles_over_bound")


def layer_csv(rep: dict) -> str:
    """One CSV row per (layer, pattern) group, in program order: what the group computes
    (ops, FP/EB/WG pattern, phase, kept/total output channels), how it is tiled (MAC
    instructions = tiles; each tile buffer's high-water mark as % of its size) and what
    it costs (DDR bytes incl. index tables, MACs, cycles and their share, utilisation)."""
    import csv
    import io
    total = rep["totals"]["overall"]["cycles"] or 1
    size = rep["target"]["buffers"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for g in rep["groups"]:
        occ = [f"{100 * g['buffer_peak'][b] / size[b]:.1f}" for b in _TILE_BUFFERS]
        w.writerow([g["layer"], g["loc"], "+".join(g["ops"]), g["pattern"], g["phase"],
                    _blank(g["kept_channels"]), _blank(g["total_channels"]), g["tiles"],
                    *occ, g["instructions"], g["ddr_bytes"] + g["index_bytes"], g["macs"],
                    g["cycles"], f"{100 * g['cycles'] / total:.2f}",
                    f"{100 * g['utilisation']:.2f}", f"{g['bound']:.0f}", g["bound_kind"],
                    "" if g["cycles_over_bound"] is None else f"{g['cycles_over_bound']:.3f}"])
    return buf.getvalue()


def _blank(v) -> str:
    return "" if v is None else str(v)


# ---------------------------------------------------------------------------- plotting

PATTERN_NAMES = {"FP": "FP: forward", "EB": "EB: error back-propagation",
                 "WG": "WG: weight gradient", "BWD": "BWD: other backward",
                 "LOSS": "LOSS: loss gradient", "UPDATE": "UPDATE: SGD", "OTHER": "OTHER"}
_COLOURS = {"FP": "tab:blue", "EB": "tab:orange", "WG": "tab:green", "BWD": "tab:red",
            "LOSS": "tab:purple", "UPDATE": "tab:brown", "OTHER": "tab:gray"}
LABELLED = 10       # points named on the plot: the largest by MACs and the farthest below the roof


def _roofline_points(rep: dict) -> list[dict]:
    """Groups with MACs and DDR bytes: intensity (MACs/byte), achieved MACs/cycle, and
    the share of the roof they reach."""
    t = rep["target"]
    peak, bw = t["mac_rows"] * t["mac_cols"], t["ddr_bytes_per_cycle"]
    pts = []
    for g in rep["groups"]:
        byt = g["ddr_bytes"] + g["index_bytes"]
        if g["macs"] and byt and g["cycles"]:
            x, y = g["macs"] / byt, g["macs"] / g["cycles"]
            pts.append(dict(x=x, y=y, pattern=g["pattern"], macs=g["macs"],
                            of_roof=y / min(peak, bw * x), name=f"{g['layer']} {g['pattern']}"))
    return pts


def _labelled(pts: list[dict]) -> list[dict]:
    """The points worth a name: the biggest by MACs, then those farthest below the roof
    among the ones with at least 1% of the MACs (the outliers worth a look)."""
    total = sum(p["macs"] for p in pts) or 1
    big = sorted(pts, key=lambda p: -p["macs"])[:LABELLED // 2]
    slow = sorted((p for p in pts if p["macs"] >= total / 100 and p not in big),
                  key=lambda p: p["of_roof"])[:LABELLED - len(big)]
    return big + slow


def plot_roofline(rep: dict, path: str) -> None:
    """Roofline plot: achieved MACs/cycle against arithmetic intensity (MACs per DDR
    byte) for every group with MACs, over the roofs of the target, the ridge point
    marked and the largest and the slowest groups named."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise EdgecError("--plot needs matplotlib, which is not installed "
                         "(pip install 'edgec[plot]', or pip install matplotlib)") from None
    t = rep["target"]
    peak, bw = t["mac_rows"] * t["mac_cols"], t["ddr_bytes_per_cycle"]
    ridge = peak / bw
    pts = _roofline_points(rep)
    fig, ax = plt.subplots(figsize=(9, 6))
    lo = min([p["x"] for p in pts] + [ridge / 10]) / 2
    hi = max([p["x"] for p in pts] + [ridge * 10]) * 2
    xs = [lo * (hi / lo) ** (k / 200) for k in range(201)]
    ax.plot(xs, [min(peak, bw * x) for x in xs], "k-", lw=1.5,
            label=f"roof: min({peak} MACs/cycle, {bw} B/cycle x intensity)")
    ax.axvline(ridge, color="k", ls=":", lw=1)
    ax.annotate(f"ridge point: {ridge:g} MACs/byte", (ridge, peak), textcoords="offset points",
                xytext=(4, -12), fontsize=8)
    mx = max([p["macs"] for p in pts] + [1])
    for pat in PATTERN_ORDER:
        sel = [p for p in pts if p["pattern"] == pat]
        if sel:
            ax.scatter([p["x"] for p in sel], [p["y"] for p in sel], c=_COLOURS[pat],
                       alpha=0.7, s=[12 + 200 * math.sqrt(p["macs"] / mx) for p in sel],
                       label=PATTERN_NAMES[pat], edgecolors="none")
    for p in _labelled(pts):
        ax.annotate(p["name"], (p["x"], p["y"]), textcoords="offset points", xytext=(5, 3),
                    fontsize=7, alpha=0.9)
    o = rep["totals"]["overall"]
    ob = o["ddr_bytes"] + o["index_bytes"]
    if o["macs"] and ob and o["cycles"]:
        ax.scatter([o["macs"] / ob], [o["macs"] / o["cycles"]], marker="*", s=250, c="k",
                   label="whole program")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (MACs per DDR byte)")
    ax.set_ylabel("achieved MACs per cycle")
    ax.set_title(f"Roofline on {t['name']} (one point per layer x pattern; size ~ MACs)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    try:
        fig.savefig(path, format="png", dpi=120)
    except OSError as e:
        raise EdgecError(f"{path}: cannot write the plot ({e.strerror})") from None
    finally:
        plt.close(fig)
