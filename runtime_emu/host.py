"""Host side: feed a program's inputs through its symbol table, run, collect out.npz.

Dynamic fixed point (docs/numerics.md section 8): a program may carry the exponent table
as the DDR symbol ``xtab`` (int32 [10 R]) and the register names as meta ``xregs``; a
symbol with a list ``xreg`` of register indices then has a CURRENT exponent, the sum over
its registers of E (kind "param": the compute copies, derived after the move) or of P
(every other kind: the exponent the step computed with).  Without a table or an ``xreg``
the symbol's compile-time ``exp`` holds.
"""
from __future__ import annotations

import numpy as np

from edgec.isa.container import DTYPE_BYTES, Program
from edgec.isa.errors import EdgecError
from edgec.isa.interface import check_interface
from edgec.isa.target import Target
from edgec.isa.timeline import Timeline

from .accesslog import HOST, AccessLog
from .losst import teacher_loss
from .machine import Machine

_NP = {"i8": np.dtype("<i1"), "i32": np.dtype("<i4")}
# values a host may write: int8 tensors never hold -128 (docs/numerics.md section 1)
_RANGE = {"i8": (-127, 127), "i32": (-(2**31), 2**31 - 1)}


def _sym(program: Program, name: str) -> dict:
    return program.symbol(name)          # EdgecError naming the symbol if absent


def _shape(s: dict) -> tuple[int, ...]:
    return tuple(int(d) for d in s["shape"])


def _exp(s: dict) -> int:
    e = s.get("exp")
    if isinstance(e, bool) or not isinstance(e, int):
        raise EdgecError(f"symbol {s['name']!r} has no fixed-point exponent (exp={e!r})")
    return e


XTAB = "xtab"                        # the exponent table's DDR symbol
XTAB_ROWS = 10                       # E, P, C, (S, Q) x 2, (S', Q') x 2, lo, hi, thr


def _xtab_symbol(program: Program) -> dict | None:
    s = next((s for s in program.symbols if s["name"] == XTAB), None)
    if s is None:
        return None
    n = int(np.prod(_shape(s), dtype=np.int64))
    if s["dtype"] != "i32" or n == 0 or n % XTAB_ROWS:
        raise EdgecError(f"symbol {XTAB!r} is {s['dtype']} {list(_shape(s))}, expected i32 "
                         f"[{XTAB_ROWS} R]")
    names = program.meta.get("xregs")
    if names is not None and (not isinstance(names, list) or len(names) * XTAB_ROWS != n):
        raise EdgecError(f"program meta 'xregs' must list the {n // XTAB_ROWS} register "
                         f"names of the {n}-word table {XTAB!r}")
    return s


def read_xtab(machine: Machine) -> np.ndarray | None:
    """The exponent table as it is in DDR now (int32 [10 R], a copy), None without one."""
    if _xtab_symbol(machine.program) is None:
        return None
    return read_symbol(machine, XTAB).reshape(-1)


def initial_xtab(program: Program) -> np.ndarray | None:
    """The exponent table of the program's initial DDR image (None without one)."""
    s = _xtab_symbol(program)
    if s is None:
        return None
    n = int(np.prod(_shape(s), dtype=np.int64))
    return np.frombuffer(program.data, dtype="<i4", count=n, offset=int(s["addr"])).copy()


def symbol_exp(s: dict, xtab: np.ndarray | None, row: str | None = None) -> int:
    """A symbol's current exponent: the sum over its registers (``xreg``) of E (``row``
    "E"; by default for kind "param") or P (row "P"; by default every other kind) in
    `xtab`; its compile-time ``exp`` without a table or registers."""
    regs = s.get("xreg")
    if xtab is None or not regs:
        return _exp(s)
    R = xtab.size // XTAB_ROWS
    if not isinstance(regs, list) or not all(isinstance(r, int) and not isinstance(r, bool)
                                             and 0 <= r < R for r in regs):
        raise EdgecError(f"symbol {s['name']!r}: xreg {regs!r} is not a list of register "
                         f"indices in [0, {R})")
    if row is None:
        row = "E" if s.get("kind") == "param" else "P"
    base = 0 if row == "E" else R
    return sum(int(xtab[base + r]) for r in regs)


def exponent_moves(before_xtab, after_xtab, names) -> list[dict]:
    """The registers whose exponent E changed between two tables (in register order):
    {"register", "name", "old", "new", "saturations" (S', the step's count that drove the
    move), "max_q" (Q')}."""
    a = np.asarray(before_xtab, dtype=np.int64).reshape(-1)
    b = np.asarray(after_xtab, dtype=np.int64).reshape(-1)
    R = b.size // XTAB_ROWS
    if a.size != b.size or b.size != R * XTAB_ROWS or len(names) != R:
        raise EdgecError(f"exponent tables of {a.size} and {b.size} words for {len(names)} "
                         f"registers: expected {XTAB_ROWS} words per register")
    moved = np.flatnonzero(a[:R] != b[:R])
    return [{"register": int(r), "name": names[r], "old": int(a[r]), "new": int(b[r]),
             "saturations": int(b[5 * R + 2 * r]), "max_q": int(b[5 * R + 2 * r + 1])}
            for r in moved]


def _span(machine: Machine, s: dict) -> tuple[int, int]:
    if s["dtype"] not in _NP:
        raise EdgecError(f"symbol {s['name']!r}: unknown dtype {s['dtype']!r}")
    n = DTYPE_BYTES[s["dtype"]] * int(np.prod(_shape(s), dtype=np.int64))
    a = int(s["addr"])
    if a < 0 or a + n > machine.ddr.size:
        raise EdgecError(f"symbol {s['name']!r} [{a}, {a + n}) lies outside DDR "
                         f"({machine.ddr.size} bytes)")
    return a, n


def _raw(machine: Machine, name: str) -> tuple[dict, np.ndarray]:
    """(symbol, a flat view of its DDR bytes as little-endian int8/int32)."""
    s = _sym(machine.program, name)
    a, n = _span(machine, s)
    return s, machine.ddr[a:a + n].view(_NP[s["dtype"]])


def read_symbol(machine: Machine, name: str) -> np.ndarray:
    """The symbol's current DDR contents as int8/int32 in its shape (a copy)."""
    s, v = _raw(machine, name)
    native = np.int8 if s["dtype"] == "i8" else np.int32
    return v.astype(native).reshape(_shape(s))


def read_real(machine: Machine, name: str) -> np.ndarray:
    """The symbol's values times 2**exp as float32 in its shape, each rounded once (to
    nearest even), as float64 arithmetic then a float32 rounding would give.  `exp` is
    the symbol's current exponent (symbol_exp over the table in DDR).  Where
    every nonzero |v| * 2**exp stays in float32's normal range (|v| in [1, 2**31],
    -126 <= exp <= 96), rounding v to float32 first and scaling by 2**exp after is the
    same single rounding (scaling by a power of two is exact there) at a third of the
    memory traffic."""
    s, v = _raw(machine, name)
    e = symbol_exp(s, read_xtab(machine) if s.get("xreg") else None)
    if -126 <= e <= 96:
        r = v.astype(np.float32)
        r *= np.float32(2.0 ** e)
    else:
        r = (v.astype(np.float64) * 2.0 ** e).astype(np.float32)
    return r.reshape(_shape(s))


def write_symbol(machine: Machine, name: str, array) -> None:
    """Write integer `array` (exactly the symbol's shape, values in its dtype's range)."""
    s = _sym(machine.program, name)
    a, n = _span(machine, s)
    arr = np.asarray(array)
    if arr.shape != _shape(s):
        raise EdgecError(f"symbol {name!r} has shape {list(_shape(s))}, got an array of "
                         f"shape {list(arr.shape)}")
    if arr.dtype.kind not in "iub":
        raise EdgecError(f"symbol {name!r} holds integers ({s['dtype']}), got dtype {arr.dtype}")
    lo, hi = _RANGE[s["dtype"]]
    v = arr.astype(np.int64)
    if v.size and (v.min() < lo or v.max() > hi):
        k = int(np.flatnonzero((v < lo) | (v > hi))[0])
        el = tuple(int(e) for e in np.unravel_index(k, arr.shape))
        raise EdgecError(f"symbol {name!r}: element {list(el)} = {int(v.reshape(-1)[k])} is "
                         f"outside [{lo}, {hi}] ({s['dtype']})")
    machine.ddr[a:a + n] = v.astype(_NP[s["dtype"]]).reshape(-1).view(np.uint8)
    machine.log.write_box(HOST, a, (n,), (1,))


def quantize_input(x_float, exp: int, shape=None) -> np.ndarray:
    """q = sat8(round_half_even(x * 2**-exp)) in float64, as int8."""
    x = np.asarray(x_float)
    if x.dtype.kind not in "fiub":
        raise EdgecError(f"input must be a real-valued array, got dtype {x.dtype}")
    if shape is not None and tuple(x.shape) != tuple(shape):
        raise EdgecError(f"input has shape {list(x.shape)}, the program expects "
                         f"{list(shape)}")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        k = int(np.flatnonzero(~np.isfinite(x.reshape(-1)))[0])
        el = tuple(int(e) for e in np.unravel_index(k, x.shape)) if x.ndim else ()
        raise EdgecError(f"input element {list(el)} is {x.reshape(-1)[k]}: inputs must be "
                         "finite")
    q = np.rint(x * np.ldexp(1.0, -int(exp)))        # rint: round half to even
    return np.clip(q, -127, 127).astype(np.int8)


def input_saturation(program: Program, x) -> str | None:
    """What of the float input `x` the program's input format cannot hold: None when every
    element is within one step of the int8 range +-127 * 2^e (e: the input's exponent,
    static, chosen at compile time from example_input), else one line naming the input,
    the range seen, the format's range and how many elements saturate."""
    xs = _sym(program, "in:x")
    e = symbol_exp(xs, initial_xtab(program), "E")
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":
        return None                       # quantize_input reports the wrong dtype
    v = a.astype(np.float64)
    if v.size == 0 or not np.isfinite(v).all():
        return None                       # quantize_input reports non-finite values
    step = 2.0 ** e
    over = int(np.count_nonzero(np.abs(v) > 128 * step))
    if not over:
        return None
    return (f"input x has values in [{v.min():.6g}, {v.max():.6g}], but its format (int8 "
            f"x 2^{e}, set by example_input) holds [{-127 * step:.6g}, {127 * step:.6g}]: "
            f"{over} of {v.size} elements saturate; scale the data as example_input is "
            "scaled (e.g. pixels / 255)")


def _scatter_grad(full_shape, g: np.ndarray, rows, cols, in_block: int) -> np.ndarray:
    full = np.zeros(full_shape, dtype=g.dtype)
    if rows is None and cols is None:
        if g.size != int(np.prod(full_shape, dtype=np.int64)):
            raise EdgecError(f"gradient of {g.size} elements for a parameter of shape "
                             f"{list(full_shape)}")
        return g.reshape(full_shape)
    r = np.arange(full_shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
    if r.size and (r.min() < 0 or r.max() >= full_shape[0]):
        raise EdgecError(f"gradient view row indices outside the parameter shape "
                         f"{list(full_shape)}")
    if len(full_shape) == 1:
        if cols is not None:
            raise EdgecError(f"parameter of shape {list(full_shape)} has an in_tab view")
        if g.size != len(r):
            raise EdgecError(f"gradient of {g.size} elements for {len(r)} kept rows of a "
                             f"parameter of shape {list(full_shape)}")
        full[r] = g.reshape(len(r))
        return full
    if cols is None:
        c = np.arange(full_shape[1])
    else:
        cols = np.asarray(cols, dtype=np.int64)
        if cols.size * in_block > full_shape[1]:
            raise EdgecError(f"{cols.size} kept input channels of {in_block} features do "
                             f"not fit a parameter of shape {list(full_shape)}")
        c = (cols[:, None] * in_block + np.arange(in_block)[None, :]).reshape(-1)
    if (r.size and (r.min() < 0 or r.max() >= full_shape[0])) or \
            (c.size and (c.min() < 0 or c.max() >= full_shape[1])):
        raise EdgecError(f"gradient view indices outside the parameter shape {list(full_shape)}")
    if g.size != len(r) * len(c) * int(np.prod(full_shape[2:], dtype=np.int64)):
        raise EdgecError(f"gradient of {g.size} elements does not fit {len(r)} rows x "
                         f"{len(c)} columns of a parameter of shape {list(full_shape)}")
    full[r[:, None], c[None, :]] = g.reshape((len(r), len(c)) + tuple(full_shape[2:]))
    return full


def _collect_param(m: Machine, p: dict, out: dict) -> None:
    """out["param/NAME"] and out["grad/NAME"] of one meta params entry."""
    name, shape = p["name"], tuple(int(d) for d in p["shape"])
    master = read_real(m, p["master"])
    if master.size != int(np.prod(shape, dtype=np.int64)):
        raise EdgecError(f"master symbol {p['master']!r} has {master.size} elements, the "
                         f"shape {list(shape)} needs {int(np.prod(shape, dtype=np.int64))}")
    out[f"param/{name}"] = master.reshape(shape)
    if p.get("grad") is None:
        out[f"grad/{name}"] = np.zeros(shape, dtype=np.float32)
        return
    g = read_real(m, p["grad"])
    rows = read_symbol(m, p["out_tab"]).reshape(-1) if p.get("out_tab") else None
    cols = read_symbol(m, p["in_tab"]).reshape(-1) if p.get("in_tab") else None
    out[f"grad/{name}"] = _scatter_grad(shape, g, rows, cols, int(p.get("in_block", 1) or 1))


def _begin_run(m: Machine) -> None:
    """Reset everything one run owns, keeping DDR (parameters, masters, all other bytes).

    A fresh Machine differs from this only in its DDR contents: pc, halted, the SEED
    register, the on-chip buffers, the access log and the counters all start over,
    so `m.counters`/`read_map`/`last_writer` always describe the latest step alone.
    """
    m.pc = 0
    m.halted = False
    m.seed = 0
    for b in m.bufs.values():
        b[...] = 0
    m.log = AccessLog(m.ddr.size)
    for k in m.counters:
        m.counters[k] = 0
    m.timing = Timeline(m.target.ddr_latency, m.counters)   # the queues start empty, at 0


class Session:
    """One Machine reused across training steps: the weights stay in emulator DDR.

        s = Session(program, target)
        for i in range(steps):
            out = s.step(x_i, y_i, seed=seed + i)   # the same out dict as run_step

    `translate`: True runs every step through translation blocks (runtime_emu/
    translate.py, translated once per program and process), False the interpreter alone,
    None (default) translates from the process's second run of the same code on (the
    first step of a Session is interpreted: one step does not repay the translation).
    Each step starts from the DDR the previous step left (parameters and masters updated
    in place by its SGD); per-run state is reset (`_begin_run`), so `s.machine.counters`
    are the latest step's and `s.totals` accumulates them over all steps.
    """

    def __init__(self, program: Program, target: Target, translate: bool | None = None):
        check_interface(program)         # the symbols and meta entries a step needs
        self.program = program
        self.machine = Machine(program, target, translate)
        self._fresh = True
        self.steps = 0
        self.totals = dict(self.machine.counters)

    def step(self, x, labels, seed: int | None = None) -> dict:
        """One training step on the kept machine; returns the out dict (see run_step)."""
        m = self.machine
        if not self._fresh:              # a fresh Machine starts in exactly this state
            _begin_run(m)
        self._fresh = False
        out = _step(self.program, m, x, labels, seed)
        self.steps += 1
        for k, v in m.counters.items():
            self.totals[k] += v
        return out


def run_step(program: Program, target: Target, x, labels, seed: int | None = None,
             translate: bool | None = None):
    """One training step on the emulator.  Returns (out dict for out.npz, machine).
    `translate` as in Session (the results are the same either way)."""
    s = Session(program, target, translate)
    return s.step(x, labels, seed), s.machine


def _subset_labels(lab: np.ndarray, ids: list[int]) -> np.ndarray:
    """Original class ids -> positions in the compiled subset ``ids``."""
    if lab.dtype.kind not in "iu":
        raise EdgecError(f"labels must be integers, got dtype {lab.dtype}")
    pos = {c: i for i, c in enumerate(ids)}
    flat = lab.reshape(-1)
    for k, v in enumerate(flat):
        if int(v) not in pos:
            raise EdgecError(f"label {k} is {int(v)}, not one of the classes the program "
                             f"was compiled for ({', '.join(map(str, ids))})")
    return np.array([pos[int(v)] for v in flat], dtype=np.int64).reshape(lab.shape)


def _step(program: Program, m: Machine, x, labels, seed: int | None) -> dict:
    """Write x, labels (and the seed) into `m`, run it, collect the out dict."""
    xs = _sym(program, "in:x")
    e_x = symbol_exp(xs, read_xtab(m), "E")         # the exponent this step will use
    write_symbol(m, "in:x", quantize_input(x, e_x, _shape(xs)))
    logits_name = program.meta["logits"]          # check_interface: a symbol [N, K]
    ls = _sym(program, logits_name)
    N, K = _shape(ls)
    teacher = program.meta.get("teacher")
    if labels is None and teacher:          # the program takes its targets from a teacher
        labels = np.full(N, (program.meta.get("class_ids") or [0])[0], dtype=np.int64)
    lab = np.asarray(labels)
    ids = program.meta.get("class_ids")
    if ids is not None:       # a class-subset program: labels are original class ids
        lab = _subset_labels(lab, [int(i) for i in ids])
    if any(s["name"] == "in:labels" for s in program.symbols):
        lsym = _sym(program, "in:labels")
        if lab.shape != _shape(lsym):
            raise EdgecError(f"labels have shape {list(lab.shape)}, the program expects "
                             f"{list(_shape(lsym))}")
        if lab.dtype.kind not in "iu":
            raise EdgecError(f"labels must be integers, got dtype {lab.dtype}")
        if lab.size and (lab.min() < 0 or lab.max() >= K):
            k = int(np.flatnonzero((lab < 0) | (lab >= K))[0])
            raise EdgecError(f"label {k} is {int(lab.reshape(-1)[k])}, outside [0, {K})")
        write_symbol(m, "in:labels", lab.astype(np.int64))
    if lab.shape != (N,) or lab.dtype.kind not in "iu":
        raise EdgecError(f"labels must be {N} integers (shape [{N}]), got dtype {lab.dtype} "
                         f"shape {list(lab.shape)}")
    if lab.size and (lab.min() < 0 or lab.max() >= K):
        k = int(np.flatnonzero((lab < 0) | (lab >= K))[0])
        raise EdgecError(f"label {k} is {int(lab.reshape(-1)[k])}, outside [0, {K})")
    if seed is not None:
        sd = int(seed)
        if not 0 <= sd < 2**32:
            raise EdgecError(f"seed {sd} is not a uint32")
        ss = _sym(program, "rng_seed")
        if int(np.prod(_shape(ss), dtype=np.int64)) != 1 or ss["dtype"] != "i32":
            raise EdgecError(f"symbol 'rng_seed' is {ss['dtype']} {list(_shape(ss))}, "
                             "expected one i32")
        write_symbol(m, "rng_seed", np.array([sd], dtype=np.uint32).view(np.int32)
                     .reshape(_shape(ss)))
    m.run()

    out: dict[str, np.ndarray] = {}
    xtab = read_xtab(m)
    z = read_symbol(m, logits_name).astype(np.float64) * 2.0 ** symbol_exp(ls, xtab)
    z2 = z.reshape(z.shape[0], -1)
    mx = z2.max(axis=1, keepdims=True)
    lse = mx[:, 0] + np.log(np.exp(z2 - mx).sum(axis=1))
    lab2 = lab.reshape(-1).astype(np.int64)
    if teacher:
        ts = _sym(program, str(program.meta.get("teacher_logits")))
        t = read_symbol(m, ts["name"]).astype(np.float64) * 2.0 ** symbol_exp(ts, xtab)
        try:
            out["loss"] = np.float32(teacher_loss(z2, t.reshape(z2.shape), teacher))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise EdgecError(f"program meta 'teacher' / 'teacher_logits' is malformed "
                             f"({type(e).__name__}: {e})") from None
    else:
        out["loss"] = np.float32(np.mean(lse - z2[np.arange(len(lab2)), lab2]))
    out["logits"] = z.astype(np.float32)
    for p in program.meta.get("params", []):
        try:
            _collect_param(m, p, out)
        except EdgecError as e:
            raise EdgecError(f"parameter {p['name']!r}: {e}") from None
    for s in program.symbols:
        out[f"sym/{s['name']}"] = read_symbol(m, s["name"])
    if xtab is not None:
        out["xtab"] = xtab
        for r, reg in enumerate(program.meta.get("xregs") or []):
            out[f"exp/{reg}"] = np.int32(xtab[r])          # E after the step
    for b in program.meta.get("adapt_bn", []):
        mean, var = bn_statistics(program, out, b)
        out[f"bn/{b['module']}.running_mean"] = mean
        out[f"bn/{b['module']}.running_var"] = var
    return out


def bn_statistics(program: Program, out: dict, b: dict) -> tuple[np.ndarray, np.ndarray]:
    """A BatchNorm's running mean and variance (float32, PyTorch's convention) implied by
    its constants after an adapt-bn run (a meta "adapt_bn" entry): scale s = 1/sqrt(var +
    eps) and -mean as the conv bias (mode 0) or shift t = -mean * s (mode 1)."""
    xtab = out.get("xtab")

    def real(name):
        sym = _sym(program, f"param:{name}")
        return (out[f"sym/param:{name}"].reshape(-1).astype(np.float64)
                * 2.0 ** symbol_exp(sym, xtab))
    qs = _sym(program, f"param:{b['q']}")
    s = np.maximum(real(b["q"]), 0.5 * 2.0 ** symbol_exp(qs, xtab))  # a zero scale: widest var
    t = real(b["b"])
    mean = -t if b["mode"] == 0 else -t / s
    var = np.maximum(1.0 / (s * s) - float(b["eps"]), 0.0)
    return mean.astype(np.float32), var.astype(np.float32)
