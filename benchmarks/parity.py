"""Accuracy parity: int8 fine-tuning on the emulator vs PyTorch float32 fine-tuning.

    python benchmarks/parity.py --json parity.json [--steps 300] [--seeds 3] [--lr 0.01]
    python benchmarks/parity.py --quick --json quick.json     # smoke test, ~1 minute
    python benchmarks/parity.py --config bnresnet --mask 0.5 ...   # a subset

For every configuration (an example model, unmasked or with a ``edgec mask --keep 0.5 --by
bn-gamma`` mask) and every data-order seed, three fine-tuning runs see the SAME batches,
learning rate, steps and mask:

  int8       the compiled program on the emulator: ``edgec.compiler.workflows.finetune.finetune``,
             i.e. exactly what ``edgec finetune`` runs (compile once, N steps on one
             machine, step i on rows i*N.. cyclically, stochastic-rounding seed base + i);
             its tuned state_dict (master weights read back as float, pruned channels
             zeroed, as ``edgec finetune -o tuned.pt`` writes) evaluated in float32
  fp32       PyTorch float32 SGD on the masked model (``verify.masked_float_model``: pruned
             channels output zero, so their parameters get zero gradient and never move),
             eval mode (BatchNorm running statistics frozen; its weight and bias train),
             softmax cross-entropy (mean), plain SGD ``p -= lr * g``
  fp32_clip  the same with the device's gradient clip: every gradient element clamped to
             ``+-127 * 2**e_g`` before the update, ``e_g`` the compile-time exponent of the
             program's ``grad:<name>`` symbol (the int8 gradient saturates there,
             docs/numerics.md "Backward")

Data order: seed 0 takes the user's training rows in their stored order (so it is the run
``edgec finetune --seed 0`` does on them); seed s > 0 a fixed permutation
(``numpy.random.default_rng(s)``) of them; the emulator's rounding seeds start at
``s * steps``.  Accuracy: float32, the user's held-out test split.  Reported per
configuration: accuracy before (pretrained), pruned (pretrained + mask), after fp32,
fp32_clip and int8 (mean, sample std, min, max over seeds), int8 - fp32, the fraction of
fp32 gradient elements the clip bound cuts, the fraction of the int8 gradients that
saturate (|q| = 127), emulator seconds per step, and ``saturation`` (the on-device
saturation counters ``xtab``, when step outputs carry them; None until then).

Configurations (lr 0.01, the learning rate examples/personalize documents; bnresnet 0.005,
at which its float32 fine-tuning does not diverge):
  personalize  examples/personalize: the digits CNN, the thick-stroke user (batch 16)
  bnresnet     examples/bnresnet: a BatchNorm ResNet, 16x16 thick-stroke digits (batch 16)
  mobilenet    examples/mobilenet: its pretrained synthetic task seen by a camera that swaps
               red and blue (examples/mobilenet/user_data.py, batch 8)
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgec.compiler.driver import compile_model
from edgec.compiler.workflows.finetune import accuracy, batch_rows, finetune
from edgec.compiler.mask.derive import derive_mask, format_mask
from edgec.compiler.frontend.load import load_model
from edgec.compiler.workflows.floatmodel import masked_float_model, prune_state_dict

ROOT = Path(__file__).resolve().parent.parent
EX = ROOT / "examples"


def _module(path: Path, name: str):
    """Import a data module by path under a unique name (the examples' module names, e.g.
    ``model``, would collide on sys.path)."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _user_splits(path: Path, name: str):
    s = _module(path, name).splits()
    return (*s["user_train"], *s["user_test"])


@dataclass(frozen=True)
class Config:
    name: str
    model: Path
    data: object            # () -> (x_train, y_train, x_test, y_test), float32 / int64
    what: str
    lr: float = 0.01        # the example's documented fine-tuning rate


CONFIGS = {c.name: c for c in (
    Config("personalize", EX / "personalize/model.py",
           lambda: _user_splits(EX / "personalize/user_digits.py", "_parity_personalize"),
           "digits CNN, thicker strokes (examples/personalize)"),
    Config("bnresnet", EX / "bnresnet/model.py",
           lambda: _user_splits(EX / "bnresnet/digits16.py", "_parity_bnresnet"),
           "BatchNorm ResNet, 16x16 digits, thicker strokes (examples/bnresnet)",
           lr=0.005),      # at 0.01 its float32 fine-tuning diverges (17% after 300 steps)
    Config("mobilenet", EX / "mobilenet/model.py",
           lambda: _user_splits(EX / "mobilenet/user_data.py", "_parity_mobilenet"),
           "MobileNet, synthetic task, red/blue swapped (examples/mobilenet/user_data.py)"),
)}


# ---------------------------------------------------------------- building blocks

def make_mask(model_path, keep: float, out_dir, by: str = "bn-gamma") -> str:
    """What ``edgec mask MODEL --keep KEEP --by BY -o FILE`` writes; returns FILE."""
    model, example = load_model(str(model_path))
    mask = derive_mask(model, example, str(model_path), keep, by, False)
    path = Path(out_dir) / f"{Path(model_path).parent.name}-keep{keep:g}-{by}.mask"
    path.write_text(format_mask(mask, f"edgec mask --keep {keep:g} --by {by}: {model_path}"))
    return str(path)


def grad_bounds(program) -> dict[str, float]:
    """{parameter: 127 * 2**e_g}: the bound at which the device's int8 gradient of each
    trained parameter saturates (e_g: the exponent of its ``grad:<name>`` symbol)."""
    out = {}
    for p in program.meta.get("params", []):
        if p.get("grad"):
            out[p["name"]] = 127.0 * 2.0 ** int(program.symbol(p["grad"])["exp"])
    return out


def data_order(seed: int, m: int) -> np.ndarray:
    """Row order of data-order seed ``seed``: stored order for 0, else a permutation."""
    return np.arange(m) if seed == 0 else np.random.default_rng(seed).permutation(m)


def float_finetune(c, x, y, steps: int, lr: float, bounds: dict | None = None,
                   stats: dict | None = None, momentum: float = 0.0):
    """Float32 SGD on the masked model (eval mode), batches ``batch_rows(i, N, M)`` of
    ``x, y`` as on the device; with ``bounds``, each gradient clamped to +-bounds[name]
    first.  Returns (the user's pruned state_dict, the raw state_dict); ``stats``, if given,
    gets 'clipped' and 'elements' (gradient elements beyond their bound / all).
    ``momentum``: torch.optim.SGD(momentum=...) on the (clamped) gradients instead."""
    model = masked_float_model(c).eval()
    params = dict(model.named_parameters())
    trained = [n for n in params if n in (bounds or grad_bounds(c.program))]
    n = int(c.example_input.shape[0])
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.asarray(y))
    clipped = elements = 0
    opt = (torch.optim.SGD([params[k] for k in trained], lr=lr, momentum=momentum)
           if momentum else None)
    for i in range(steps):
        r = torch.from_numpy(batch_rows(i, n, len(x)))
        for p in params.values():
            p.grad = None
        torch.nn.functional.cross_entropy(model(xt[r]), yt[r]).backward()
        with torch.no_grad():
            for name in trained:
                p = params[name]
                if p.grad is None:
                    continue
                g = p.grad
                if bounds is not None:
                    b = bounds[name]
                    clipped += int((g.abs() > b).sum())
                    elements += g.numel()
                    g = g.clamp(-b, b)
                if opt is not None:
                    p.grad = g
                else:
                    p.add_(g, alpha=-lr)
        if opt is not None:
            opt.step()
    if stats is not None:
        stats.update(clipped=clipped, elements=elements)
    raw = copy.deepcopy(model.state_dict())
    return prune_state_dict(c, raw), raw


def saturation_summary(outs) -> dict | None:
    """What the device's exponent table (``xtab``, docs/numerics.md section 8) saw over a
    run, from each step's out dict (or the tables themselves): saturated elements counted
    per step (the S' row: the statistics the rule acted on), and the exponent moves
    (coarser, finer).  None when the steps carry no table (static formats)."""
    tabs = [np.asarray(o["xtab"] if isinstance(o, dict) else o, dtype=np.int64).reshape(-1)
            for o in outs if not isinstance(o, dict) or "xtab" in o]
    if not tabs:
        return None
    R = tabs[0].size // 10
    sat = [int(t[5 * R:7 * R:2].sum()) for t in tabs]
    up = down = 0
    for a, b in zip(tabs, tabs[1:]):
        up += int((b[:R] > a[:R]).sum())
        down += int((b[:R] < a[:R]).sum())
    k = max(1, len(tabs) // 10)
    return {"steps": len(tabs), "saturated_per_step": float(np.mean(sat)),
            "saturated_per_step_last10": float(np.mean(sat[-k:])),
            "moves_coarser": up, "moves_finer": down,
            "moved_from_start": int((tabs[-1][:R] != tabs[0][R:2 * R]).sum())}


class StepStats:
    """finetune(on_step=...) collector, without keeping whole out dicts: int8 gradient
    saturation (|q| = 127 in every ``grad:`` symbol), forward activation saturation (|q| =
    127 in the int8 activations: the formats are fixed at compile time, so a model that
    outgrows them saturates) and the ``xtab`` entries."""

    def __init__(self, program):
        self.grads = [f"sym/{p['grad']}" for p in program.meta.get("params", [])
                      if p.get("grad")]
        # int8 forward activations (not parameters, inputs or backward values)
        back = {k for k in (s["name"] for s in program.symbols)
                if k.startswith("grad:") or k.endswith((".dx", ".dz", ".dxhat", ".dsum"))}
        self.acts = [f"sym/{s['name']}" for s in program.symbols if s["dtype"] == "i8"
                     and not s["name"].startswith(("param:", "in:")) and s["name"] not in back]
        self.saturated = self.elements = 0
        self.first = self.last = None
        self.act = []                      # per step: fraction of activations at +-127
        self.act_last = {}                 # per activation, the last step's fraction
        self.xtabs = []

    def __call__(self, i, out):
        s = sum(int((np.abs(out[k]) >= 127).sum()) for k in self.grads)
        e = sum(int(out[k].size) for k in self.grads)
        self.saturated += s
        self.elements += e
        frac = s / max(1, e)
        self.first = frac if self.first is None else self.first
        self.last = frac
        a = {k[4:]: float((np.abs(out[k]) >= 127).mean()) for k in self.acts}
        na = sum(out[k].size for k in self.acts)
        self.act.append(sum(a[k[4:]] * out[k].size for k in self.acts) / max(1, na))
        self.act_last = a
        if "xtab" in out:
            self.xtabs.append({"xtab": np.array(out["xtab"], copy=True)})

    def summary(self) -> dict:
        act = np.asarray(self.act or [0.0])
        k = max(1, len(act) // 10)
        top = sorted(self.act_last.items(), key=lambda kv: -kv[1])[:3]
        return {"fraction": self.saturated / max(1, self.elements),
                "first_step": self.first, "last_step": self.last,
                "act_fraction_first10pct": float(act[:k].mean()),
                "act_fraction_last10pct": float(act[-k:].mean()),
                "act_fraction_max": float(act.max()),
                "act_last_step_top": dict(top)}


def _spread(v) -> dict:
    v = [float(a) for a in v]
    return {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
            "min": min(v), "max": max(v), "per_seed": v}


def run_config(cfg: Config, mask_keep: float | None, steps: int, seeds, lr: float | None,
               work_dir, log=lambda m: None, data=None, momentum: float = 0.0) -> dict:
    """One configuration: compile once, then for every data-order seed the int8, fp32 and
    fp32_clip runs; the result dict of the JSON (see the module docstring).  `lr` None:
    the configuration's own."""
    lr = cfg.lr if lr is None else lr
    xtr, ytr, xte, yte = data if data is not None else cfg.data()
    mask = make_mask(cfg.model, mask_keep, work_dir) if mask_keep else None
    t0 = time.perf_counter()
    c = compile_model(str(cfg.model), mask, lr=lr, seed=0, momentum=momentum)
    compile_s = time.perf_counter() - t0
    bounds = grad_bounds(c.program)
    res = {"config": cfg.name, "model": str(cfg.model.relative_to(ROOT)), "what": cfg.what,
           "lr": lr,
           "mask": f"--keep {mask_keep:g} --by bn-gamma" if mask_keep else None,
           "kept_channels": {k: len(v) for k, v in c.mask.items()} if mask else {},
           "lr": lr, **({"momentum": momentum} if momentum else {}),
           "steps": steps, "seeds": list(seeds),
           "batch": int(c.example_input.shape[0]), "train_rows": len(xtr),
           "test_rows": len(xte), "compile_seconds": round(compile_s, 2),
           "grad_bound": bounds,
           "acc_before": accuracy(c.model, xte, yte),
           "acc_pruned": accuracy(c.model, xte, yte, prune_state_dict(c, c.model.state_dict()))}
    acc = {"fp32": [], "fp32_clip": [], "int8": []}
    clip_frac, sat, emu_s, xtabs, loss = [], [], [], [], []
    for s in seeds:
        o = data_order(s, len(xtr))
        x, y = xtr[o], ytr[o]
        log(f"{cfg.name} mask={mask_keep} seed {s}: fp32")
        acc["fp32"].append(accuracy(c.model, xte, yte,
                                    float_finetune(c, x, y, steps, lr,
                                                   momentum=momentum)[0]))
        st = {}
        acc["fp32_clip"].append(accuracy(c.model, xte, yte,
                                         float_finetune(c, x, y, steps, lr, bounds, st,
                                                        momentum)[0]))
        clip_frac.append(st["clipped"] / max(1, st["elements"]))
        log(f"{cfg.name} mask={mask_keep} seed {s}: {steps} emulator steps")
        col = StepStats(c.program)
        ft = finetune(c, x, y, steps, seed=s * steps, on_step=col)
        acc["int8"].append(accuracy(c.model, xte, yte, ft.state_dict))
        sat.append(col.summary())
        xtabs.append(saturation_summary(col.xtabs))
        emu_s.append(ft.seconds / steps)
        loss.append({"first": ft.mean_loss("first"), "last": ft.mean_loss("last")})
        log(f"  fp32 {acc['fp32'][-1]:.2f}  fp32_clip {acc['fp32_clip'][-1]:.2f}  "
            f"int8 {acc['int8'][-1]:.2f}  ({1e3 * emu_s[-1]:.1f} ms/step)")
    for k, v in acc.items():
        res[f"acc_{k}"] = _spread(v)
    res["int8_minus_fp32"] = _spread(np.subtract(acc["int8"], acc["fp32"]))
    res["int8_minus_fp32_clip"] = _spread(np.subtract(acc["int8"], acc["fp32_clip"]))
    res["fp32_clip_fraction"] = _spread(clip_frac)
    res["int8_grad_saturation"] = sat         # and forward activation saturation
    res["int8_loss"] = loss
    res["saturation"] = xtabs if any(t is not None for t in xtabs) else None
    res["emu_ms_per_step"] = _spread([1e3 * t for t in emu_s])
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return res


def table(results) -> str:
    def ms(d):
        return f"{d['mean']:6.2f}" + (f"±{d['std']:.2f}" if len(d["per_seed"]) > 1 else "")
    head = (f"{'config':<12} {'mask':<5} {'before':>7} {'pruned':>7} {'fp32':>12} "
            f"{'fp32+clip':>12} {'int8':>12} {'int8-fp32':>12} {'clip%':>6} {'sat%':>6} "
            f"{'act%':>6} {'ms/step':>8}")
    lines = [head, "-" * len(head)]
    for r in results:
        sat = 100 * np.mean([s["fraction"] for s in r["int8_grad_saturation"]])
        act = 100 * np.mean([s["act_fraction_last10pct"] for s in r["int8_grad_saturation"]])
        lines.append(
            f"{r['config']:<12} {'50%' if r['mask'] else 'none':<5} {r['acc_before']:7.2f} "
            f"{r['acc_pruned']:7.2f} {ms(r['acc_fp32']):>12} {ms(r['acc_fp32_clip']):>12} "
            f"{ms(r['acc_int8']):>12} {ms(r['int8_minus_fp32']):>12} "
            f"{100 * r['fp32_clip_fraction']['mean']:6.3f} {sat:6.3f} {act:6.2f} "
            f"{r['emu_ms_per_step']['mean']:8.1f}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", metavar="F", help="write the results as JSON")
    ap.add_argument("--steps", type=int, help="steps per run (default 300; --quick 30)")
    ap.add_argument("--seeds", type=int, help="data-order seeds 0..S-1 (default 3; --quick 1)")
    ap.add_argument("--lr", type=float, default=None,
                    help="learning rate of every configuration (default: each example's "
                    "own: 0.01, bnresnet 0.005)")
    ap.add_argument("--momentum", type=float, default=0.0, metavar="MU",
                    help="SGD momentum for both the int8 program (--momentum) and the fp32 "
                    "baselines (torch.optim.SGD momentum); default 0")
    ap.add_argument("--config", action="append", choices=sorted(CONFIGS),
                    help="only these configurations (repeatable; default all)")
    ap.add_argument("--mask", action="append", type=float, metavar="KEEP",
                    help="mask keep fractions, 0 = unmasked (repeatable; default 0 and 0.5)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 30 steps, 1 seed, "
                    "personalize and bnresnet with the 50%% mask")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.seeds = args.steps or 30, args.seeds or 1
        args.config = args.config or ["personalize", "bnresnet"]
        args.mask = args.mask or [0.5]
    args.steps, args.seeds = args.steps or 300, args.seeds or 3
    # one thread: the float32 steps are tiny (threads only add overhead, and oversubscribe
    # a busy host badly); the emulator holds numpy's BLAS to one thread itself
    torch.set_num_threads(1)
    names = args.config or list(CONFIGS)
    keeps = args.mask if args.mask is not None else [0.0, 0.5]
    t0 = time.perf_counter()
    log = lambda m: print(f"  [{time.perf_counter() - t0:7.1f}s] {m}", file=sys.stderr)  # noqa
    results = []
    with tempfile.TemporaryDirectory() as work:
        for name in names:
            cfg = CONFIGS[name]
            data = cfg.data()
            for keep in keeps:
                results.append(run_config(cfg, keep or None, args.steps,
                                          range(args.seeds), args.lr, work, log, data,
                                          args.momentum))
    out = {"steps": args.steps, "seeds": args.seeds, "lr": args.lr,
           **({"momentum": args.momentum} if args.momentum else {}), "quick": args.quick,
           "torch_threads": torch.get_num_threads(), "configs": results,
           "total_seconds": round(time.perf_counter() - t0, 1)}
    print(f"{args.steps} steps, lr {args.lr or 'per configuration'}, momentum "
          f"{args.momentum}, data-order seeds 0..{args.seeds - 1}; "
          "accuracy in % on the user's test split (mean±std over seeds); clip%: fp32 "
          "gradient elements beyond the device bound; sat%: int8 gradients at +-127 (all "
          "steps); act%: int8 forward activations at +-127 (last 10% of steps)")
    print(table(results))
    print(f"total {out['total_seconds']} s")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")
    return out


if __name__ == "__main__":
    main()
