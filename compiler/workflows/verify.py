"""edgec verify: the three-way check of one compiled training step.

1. emulator (runtime_emu, numpy) vs reference interpreter (torch): every symbol-table
   tensor, bit for bit; a mismatch names the first differing element and the instruction
   that last wrote it;
2. gradient fidelity, the pass/fail criterion: the fixed-point gradients, averaged over
   several stochastic-rounding seeds, against float back-propagation through the device's
   own forward (its int8 weights and activations; compiler/workflows/fidelity.py), cosine >=
   fidelity.THRESHOLD for every trainable parameter.  Beside it, as information: cosine and
   relative error against float32 PyTorch autograd of the unquantized masked model, and the
   int8-forward floor (docs/numerics.md section 7).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from edgec.runtime_emu.host import run_step

from ..driver import Compiled
from ..reference import run_reference
from .floatmodel import cosine_rel, float_grads, quantize_input, subset_labels


@dataclass
class Mismatch:
    symbol: str
    index: tuple
    ref: int
    emu: int
    instr: int
    origin: str


@dataclass
class Report:
    checked: list[str] = field(default_factory=list)
    mismatches: list[Mismatch] = field(default_factory=list)
    fidelity: list[tuple[str, float, float]] = field(default_factory=list)  # name, cos, rel
    floor: dict[str, float] = field(default_factory=dict)   # name -> int8-forward floor
    # the criterion: name -> cosine of the seed-averaged fixed-point gradient to float
    # back-propagation through the device's forward (fidelity.criterion_cosines)
    devfwd: dict[str, float] = field(default_factory=dict)
    sr_seeds: int = 0
    threshold: float = 0.98
    counters: dict = field(default_factory=dict)
    out: dict = field(default_factory=dict)
    machine: object = None

    @property
    def bit_exact(self) -> bool:
        return not self.mismatches

    @property
    def fidelity_worst(self) -> tuple[str, float] | None:
        """(parameter, cosine) of the criterion's lowest cosine; None when not checked."""
        if not self.devfwd:
            return None
        name = min(self.devfwd, key=self.devfwd.get)
        return name, self.devfwd[name]

    @property
    def fidelity_ok(self) -> bool | None:
        """Whether every criterion cosine reaches the threshold; None when not checked (a
        BatchNorm adaptation program, a program resumed from an IR dump)."""
        w = self.fidelity_worst
        return None if w is None else w[1] >= self.threshold


def make_batch(c: Compiled, batch_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random batch near the calibration data: example_input plus 10% noise."""
    gen = torch.Generator().manual_seed(batch_seed)
    ex = c.example_input.float()
    x = ex + 0.1 * ex.std() * torch.randn(ex.shape, generator=gen)
    k = c.program.meta["classes"]
    y = torch.randint(0, k, (ex.shape[0],), generator=gen)
    ids = c.program.meta.get("class_ids")
    if ids is not None:                  # labels are original class ids
        y = torch.as_tensor(ids, dtype=torch.long)[y]
    return x, y


def reference_step(c: Compiled, x: torch.Tensor, y: torch.Tensor, seed: int) -> dict:
    g = c.graph
    y = subset_labels(c, y)
    inputs = {"x": quantize_input(x, g.values["x"].exp), "labels": y.to(torch.int64)}
    for name, arr in g.meta["init"].items():
        inputs[name] = torch.from_numpy(np.asarray(arr, dtype=np.int64))
    return run_reference(g, inputs, seed)


def verify(c: Compiled, seed: int = 0, batch_seed: int = 0, sr_seeds: int = 8,
           log=None) -> Report:
    """Emulator vs reference bit for bit (seed ``seed``), then the fidelity table; the
    criterion averages the reference's gradients over the seeds seed..seed+sr_seeds-1.
    log(stage), if given, hears each stage as it begins."""
    log = log or (lambda stage: None)
    x, y = make_batch(c, batch_seed)
    log("reference interpreter")
    ref = reference_step(c, x, y, seed)
    log("emulator")
    out, machine = run_step(c.program, c.target, x.numpy(), y.numpy(), seed)
    log("compare")
    rep = Report(counters=dict(machine.counters), out=out, machine=machine)
    origin = c.program.meta.get("origin", [])
    for s in c.program.symbols:
        if s.get("value") is None or s["value"] not in ref:
            continue
        rep.checked.append(s["name"])
        r = ref[s["value"]].numpy().astype(np.int64).reshape(s["shape"])
        e = out[f"sym/{s['name']}"].astype(np.int64).reshape(s["shape"])
        if not np.array_equal(r, e):
            flat = int(np.flatnonzero((r != e).ravel())[0])
            idx = np.unravel_index(flat, r.shape)
            es = 1 if s["dtype"] == "i8" else 4
            w = int(machine.last_writer[s["addr"] + es * flat])
            rep.mismatches.append(Mismatch(s["name"], tuple(int(i) for i in idx),
                                           int(r.ravel()[flat]), int(e.ravel()[flat]), w,
                                           origin[w] if 0 <= w < len(origin) else "initial data"))
    if "adapt_bn" in c.program.meta:          # a BatchNorm adaptation program
        from .adapt import adapt_fidelity
        rep.fidelity += adapt_fidelity(c, x, out)
        return rep
    log("float autograd")
    fg = float_grads(c, x, y)
    for p in c.program.meta["params"]:
        if p["grad"] is None:
            continue
        cos, rel = cosine_rel(out[f"grad/{p['name']}"], fg[p["name"]].numpy())
        rep.fidelity.append((p["name"], cos, rel))
    from .fidelity import THRESHOLD, criterion_cosines, floor_cosines
    log("int8 floor")
    rep.floor = floor_cosines(c, x, y)
    log(f"fidelity criterion ({sr_seeds} stochastic-rounding seeds)")
    rep.devfwd = criterion_cosines(c, ref, seed, sr_seeds)
    rep.sr_seeds, rep.threshold = sr_seeds, THRESHOLD
    return rep


def format_report(rep: Report) -> str:
    lines = ["bit-exactness (emulator vs reference interpreter):"]
    bad = {m.symbol: m for m in rep.mismatches}
    for name in rep.checked:
        m = bad.get(name)
        if m is None:
            lines.append(f"  {name:<40} bit-exact")
        else:
            lines.append(f"  {name:<40} MISMATCH at {list(m.index)}: reference {m.ref}, "
                         f"emulator {m.emu}; last written by instruction {m.instr} "
                         f"({m.origin})")
    lines.append("")
    floor, dev = rep.floor, rep.devfwd
    if dev:
        lines.append(f"fidelity (fixed-point gradients; criterion: cosine, averaged over "
                     f"{rep.sr_seeds} stochastic-rounding seeds, to float")
        lines.append("back-propagation through the device's own int8 forward; the other "
                     "columns are information):")
    else:
        lines.append("fidelity (fixed point vs float32 PyTorch, same masked model: gradients "
                     "vs autograd, or adapted BatchNorm statistics vs float batch statistics):")
    lines.append(f"  {'tensor':<28}" + (f" {'dev-fwd cos':>11}" if dev else "")
                 + f" {'cosine':>8} {'rel.err':>8}" + (f" {'int8 floor':>10}" if floor else ""))
    for name, cos, rel in rep.fidelity:
        d = (f" {dev[name]:11.4f}" if name in dev else f" {'-':>11}") if dev else ""
        f = f" {floor[name]:10.4f}" if name in floor else ""
        lines.append(f"  {name:<28}{d} {cos:8.4f} {rel:8.4f}{f}")
    if dev:
        lines.append("  (dev-fwd cos: the criterion, >= "
                     f"{rep.threshold} for every gradient. cosine, rel.err: vs float32 "
                     "autograd of the")
        lines.append("   unquantized masked model. int8 floor: float32 back-propagation with "
                     "only the forward")
        lines.append("   activations rounded, vs the same autograd. docs/numerics.md "
                     "section 7)")
    elif floor:
        lines.append("  (int8 floor: float32 back-propagation through the same forward with its "
                     "activations rounded")
        lines.append("   to their int8 formats; a cosine near its floor is the int8 forward's "
                     "cost, one far below it")
        lines.append("   the backward numerics'; docs/numerics.md section 7)")
    c = rep.counters
    lines.append("")
    lines.append(f"emulator: {c.get('instructions', 0)} instructions, {c.get('macs', 0)} MACs, "
                 f"{c.get('ddr_read_bytes', 0)} DDR bytes read, "
                 f"{c.get('ddr_write_bytes', 0)} written, {c.get('cycles', 0)} cycles")
    lines.append(f"result: {'BIT-EXACT' if rep.bit_exact else 'MISMATCH'} "
                 f"({len(rep.checked) - len(rep.mismatches)}/{len(rep.checked)} tensors equal)")
    lines.append(fidelity_line(rep))
    return "\n".join(lines)


def fidelity_line(rep: Report) -> str:
    """``fidelity: PASS (worst: NAME COS >= 0.98 over K seeds)``, FAIL, or not checked."""
    w = rep.fidelity_worst
    if w is None:
        return ("fidelity: not checked (no trainable gradients, or no float graph: a "
                "program resumed from an IR dump or a BatchNorm adaptation program)")
    ok = rep.fidelity_ok
    return (f"fidelity: {'PASS' if ok else 'FAIL'} (worst: {w[0]} {w[1]:.4f} "
            f"{'>=' if ok else '<'} {rep.threshold} over {rep.sr_seeds} seeds)")
