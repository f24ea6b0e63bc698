"""`edgec finetune`: many training steps of one compiled program on the emulator.

The program is compiled once; one emulator Machine (runtime_emu.host.Session) runs every
step, so parameters, masters (and momentum buffers, --momentum) stay in emulator DDR
between steps, exactly as on the device. Step i trains on rows
`[(i*N + j) % M for j in range(N)]` of the data (N = the compiled batch, M = the number
of rows) with stochastic-rounding seed `seed + i`
(written to the `rng_seed` symbol). Accuracy before/after is measured in float32 PyTorch
(eval mode) with the model's own weights and with the tuned weights loaded.
"""
from __future__ import annotations

import copy
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

from edgec.isa.errors import EdgecError

from .floatmodel import prune_state_dict


@dataclass
class FinetuneResult:
    losses: list[float]                 # per step, the emulator's batch loss
    params: dict[str, np.ndarray]       # trainable name -> float32 value after the last step
    state_dict: OrderedDict             # the model's state_dict with `params` substituted
    totals: dict[str, int] = field(default_factory=dict)   # emulator counters, all steps
    seconds: float = 0.0                # wall time of the steps
    session: object = None              # the runtime_emu.host.Session, tuned weights in DDR
    moves: list = field(default_factory=list)   # exponent moves: dicts with "step" added

    def moves_summary(self) -> str:
        """One line: how many exponents moved, coarser and finer, and which most."""
        if not self.moves:
            return "exponent moves: none"
        up = sum(m["new"] > m["old"] for m in self.moves)
        names: dict[str, int] = {}
        for m in self.moves:
            names[m["name"]] = names.get(m["name"], 0) + 1
        top = sorted(names.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        return (f"exponent moves: {len(self.moves)} ({up} coarser, {len(self.moves) - up} "
                f"finer) over {len(names)} tensors; most: "
                + ", ".join(f"{k} x{v}" for k, v in top))

    def mean_loss(self, part: str) -> float:
        """Mean loss of the first ('first') or last ('last') 10% of steps (at least 1)."""
        k = max(1, math.ceil(len(self.losses) / 10))
        seg = self.losses[:k] if part == "first" else self.losses[-k:]
        return float(np.mean(seg))


def check_data(x, y, sample_shape, classes, min_rows: int, what: str):
    """Validate x float32 (M, *sample_shape), y integer (M,) in [0, classes) (or, for a
    class-subset program, among the class ids ``classes``), M >= min_rows."""
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype != np.float32:
        raise EdgecError(f"{what}: x must be float32, got {x.dtype}")
    if x.ndim < 1 or tuple(x.shape[1:]) != tuple(sample_shape):
        raise EdgecError(f"{what}: x has shape {list(x.shape)}, expected "
                         f"[M, {', '.join(str(d) for d in sample_shape)}]")
    if y.dtype.kind not in "iu":
        raise EdgecError(f"{what}: y must be integer labels (int64), got {y.dtype}")
    if y.shape != (x.shape[0],):
        raise EdgecError(f"{what}: y has shape {list(y.shape)}, expected [{x.shape[0]}] "
                         "(one label per row of x)")
    if x.shape[0] < min_rows:
        raise EdgecError(f"{what}: {x.shape[0]} rows, at least {min_rows} needed "
                         f"(the compiled batch)")
    if isinstance(classes, (list, tuple)):
        bad = np.flatnonzero(~np.isin(y, np.asarray(classes)))
        if bad.size:
            raise EdgecError(f"{what}: label y[{int(bad[0])}] = {int(y[bad[0]])} is not one "
                             f"of the compiled classes ({', '.join(map(str, classes))})")
    else:
        bad = np.flatnonzero((y < 0) | (y >= classes))
        if bad.size:
            raise EdgecError(f"{what}: label y[{int(bad[0])}] = {int(y[bad[0]])} is outside "
                             f"[0, {classes})")
    if not np.isfinite(x).all():
        raise EdgecError(f"{what}: x has non-finite values")
    return x, y.astype(np.int64)


def accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, state_dict=None,
             chunk: int = 512, class_ids=None) -> float:
    """Top-1 accuracy in percent, float32 PyTorch, eval mode (on a copy of the model);
    with ``class_ids``, the prediction is the best of those classes only."""
    m = copy.deepcopy(model)
    if state_dict is not None:
        m.load_state_dict(state_dict, strict=True)
    m.eval()
    hits = 0
    with torch.no_grad():
        for a in range(0, len(x), chunk):
            z = m(torch.from_numpy(np.ascontiguousarray(x[a:a + chunk])))
            if class_ids is not None:
                pred = np.asarray(class_ids)[z[:, list(class_ids)].argmax(1).numpy()]
            else:
                pred = z.argmax(1).numpy()
            hits += int((pred == y[a:a + chunk]).sum())
    return 100.0 * hits / max(1, len(x))


def batch_rows(i: int, n: int, m: int) -> np.ndarray:
    """Rows of step i: deterministic cycling through the data."""
    return (i * n + np.arange(n)) % m


def finetune(compiled, x, y, steps: int, seed: int = 0, log=None,
             every: int | None = None, on_step=None) -> FinetuneResult:
    """Run `steps` training steps of compiled.program on one emulator machine.
    `y` may be None when the program takes its targets from a teacher (--labels pseudo,
    --loss kd); otherwise (and if given) the labels are checked.

    log(line) gets one progress line every `every` steps (default steps/20) and after the
    last one.  on_step(i, out), if given, sees every step's out dict (benchmarks/parity.py
    reads statistics from it); it must not change it.
    """
    from edgec.runtime_emu.host import Session, exponent_moves, read_xtab
    log = log or (lambda line: None)
    prog = compiled.program
    n = int(compiled.example_input.shape[0])
    if y is None and prog.meta.get("teacher"):      # targets from the teacher: no labels
        y = np.zeros(len(x), dtype=np.int64)
    x, y = check_data(x, y, tuple(compiled.example_input.shape[1:]),
                      prog.meta.get("class_ids") or int(prog.meta["classes"]), n,
                      "training data")
    steps = int(steps)
    if steps < 1:
        raise EdgecError(f"--steps must be at least 1, got {steps}")
    if not (0 <= seed and seed + steps - 1 < 2**32):
        raise EdgecError(f"seeds {seed}..{seed + steps - 1} are not all uint32")
    every = every or max(1, steps // 20)
    sess = Session(prog, compiled.target)
    losses, out, t0 = [], None, time.perf_counter()
    table, names, moves = read_xtab(sess.machine), prog.meta.get("xregs"), []
    for i in range(steps):
        r = batch_rows(i, n, len(x))
        out = sess.step(x[r], y[r], seed=seed + i)
        losses.append(float(out["loss"]))
        if table is not None:
            moves += [{**m, "step": i} for m in exponent_moves(table, out["xtab"], names)]
            table = out["xtab"]
        if on_step is not None:
            on_step(i, out)
        if (i + 1) % every == 0 or i + 1 == steps:
            log(f"step {i + 1}/{steps}  loss {losses[-1]:.4f}  "
                f"(mean of last {min(every, i + 1)}: {np.mean(losses[-every:]):.4f})  "
                + (f"exponent moves {len(moves)}  " if table is not None else "")
                + f"[{time.perf_counter() - t0:.1f}s]")
    seconds = time.perf_counter() - t0
    sd = copy.deepcopy(compiled.model).state_dict()
    params = {}
    for p in prog.meta.get("params", []):
        name = p["name"]
        if name not in sd:
            raise EdgecError(f"trained parameter {name!r} is not in the model's state_dict")
        v = out[f"param/{name}"]
        if tuple(v.shape) != tuple(sd[name].shape):
            raise EdgecError(f"parameter {name!r}: emulator shape {list(v.shape)}, model "
                             f"shape {list(sd[name].shape)}")
        params[name] = v
        sd[name] = torch.from_numpy(v.astype(np.float32).copy()).to(sd[name].dtype)
    # the user's pruned model: pruned channels output zero, as on the device
    sd = prune_state_dict(compiled, OrderedDict(sd))
    return FinetuneResult(losses, params, sd, dict(sess.totals), seconds, sess, moves)


def emulator_accuracy(compiled, session, x, y) -> float:
    """Top-1 accuracy in percent of the int8 forward pass ON THE EMULATOR, with the weights
    ``session`` holds in DDR: each batch of N rows (the last one padded by repeating rows)
    runs one step of the program and its logits are read back; the DDR image is restored
    after every batch, so the evaluation changes no weight."""
    prog = compiled.program
    n = int(compiled.example_input.shape[0])
    x, y = check_data(x, y, tuple(compiled.example_input.shape[1:]),
                      prog.meta.get("class_ids") or int(prog.meta["classes"]), 1,
                      "evaluation data")
    ids = prog.meta.get("class_ids")
    dummy = np.full(n, ids[0] if ids else 0, dtype=np.int64)
    m = session.machine
    image, steps, totals = m.ddr.copy(), session.steps, dict(session.totals)
    hits = 0
    try:
        for a in range(0, len(x), n):
            r = np.minimum(np.arange(a, a + n), len(x) - 1)
            z = session.step(x[r], dummy, seed=0)["logits"].reshape(n, -1)
            pred = z.argmax(1) if ids is None else np.asarray(ids)[z.argmax(1)]
            k = min(n, len(x) - a)
            hits += int((pred[:k] == y[a:a + k]).sum())
            m.ddr[:] = image
    finally:
        m.ddr[:] = image
        session.steps, session.totals = steps, totals
    return 100.0 * hits / max(1, len(x))
