"""Gradient fidelity and its floor (issue 4, acceptance 2): how close can an int8 step get?

    python benchmarks/fidelity.py [--batches 4] [--sr-seeds 8] [--quick] [--json F]

For every configuration (examples/mobilenet with and without its user.mask, and
examples/resnet18 unless --quick) and every verification batch (verify.make_batch, seeds
0..B-1), three gradient sets of the same masked training graph (the graph after the mask
pass, before quantization):

    float      the float32 interpretation of the graph (compiler/ir/float_interp.py);
               `float_vs_autograd` checks it against PyTorch autograd (unmasked configs)
    fixed      the fixed-point step: the reference interpreter (bit-exact with the emulator,
               tests/test_e2e_*.py), gradients dequantized
    floor      the float interpretation again, with every forward int8 activation rounded
               to the format the compiler chose for it (nearest, saturating at +-127): int8
               forward activations with a power-of-two scale per tensor (DESIGN.md section 4),
               and nothing else quantized -- float weights, float back-propagation

and the pass/fail criterion of `edgec verify` (compiler/workflows/fidelity.py): `fixed` averaged over
--sr-seeds stochastic-rounding seeds against float back-propagation through the device's
own int8 forward (`devfwd`, required >= 0.98 for every gradient).  It prints, per
configuration, the criterion's minimum cosine, and, as information, the minimum cosine to `float` over every weight gradient and
batch for `fixed` and for `floor`, with the tensor where it occurs.  When `floor` is below a
target, no choice of backward numerics reaches it: the int8 forward alone moves the
gradients that far (ReLU/ReLU6 masks flip where activations near zero change sign, and
every later product sees the rounded activations).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def log(msg: str, t0=[time.perf_counter()]) -> None:       # noqa: B006 (start time)
    print(f"[{time.perf_counter() - t0[0]:7.1f}s] {msg}", file=sys.stderr, flush=True)


def measure(name: str, model_path: Path, mask: Path | None, batches: int,
            sr_seeds: int = 8) -> dict:
    from edgec.compiler.driver import compile_model
    from edgec.compiler.workflows.fidelity import THRESHOLD, criterion_cosines, float_and_floor, float_params
    from edgec.compiler.workflows.floatmodel import cosine_rel, float_grads
    from edgec.compiler.workflows.verify import make_batch, reference_step
    log(f"{name}: compile")
    c = compile_model(str(model_path), str(mask) if mask else None)
    G, params = c.graph, float_params(c)
    grads = [p for p in c.program.meta["params"] if p["grad"]]
    worst = {"fixed": (2.0, ""), "floor": (2.0, "")}
    below = {"fixed": set(), "floor": set()}
    sanity = 1.0
    crit = (2.0, "")
    for b in range(batches):
        x, y = make_batch(c, b)
        log(f"{name}: batch {b}: reference, float, floor")
        ref = reference_step(c, x, y, b)
        for p, cos in criterion_cosines(c, ref, b, sr_seeds).items():
            crit = min(crit, (cos, p))
        flo, low = float_and_floor(c, x, y, params)
        if mask is None:
            ag = float_grads(c, x, y)
        for p in grads:
            v, f = p["grad"], flo[p["grad"]].double().numpy()
            fixed = ref[v].double().numpy() * 2.0 ** G.values[v].exp
            for kind, got in (("fixed", fixed), ("floor", low[v].double().numpy())):
                cos = cosine_rel(got.reshape(-1), f.reshape(-1))[0]
                if cos < worst[kind][0]:
                    worst[kind] = (cos, p["name"])
                if cos < 0.95:
                    below[kind].add(p["name"])
            if mask is None:
                sanity = min(sanity, cosine_rel(f.reshape(-1), ag[p["name"]].numpy().reshape(-1))[0])
    return {"config": name, "gradients": len(grads), "batches": batches,
            "sr_seeds": sr_seeds, "devfwd_min_cos": round(crit[0], 4), "devfwd_worst": crit[1],
            "criterion": "PASS" if crit[0] >= THRESHOLD else "FAIL",
            "fixed_min_cos": round(worst["fixed"][0], 4), "fixed_worst": worst["fixed"][1],
            "fixed_below_0.95": len(below["fixed"]),
            "floor_min_cos": round(worst["floor"][0], 4), "floor_worst": worst["floor"][1],
            "floor_below_0.95": len(below["floor"]),
            "float_vs_autograd": round(sanity, 6) if mask is None else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=4, help="verification batches (seeds)")
    ap.add_argument("--sr-seeds", type=int, default=8,
                    help="stochastic-rounding seeds of the criterion's average (default 8)")
    ap.add_argument("--quick", action="store_true", help="examples/mobilenet only")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    ex = ROOT / "examples"
    configs = [("mobilenet", ex / "mobilenet/model.py", None),
               ("mobilenet+user.mask", ex / "mobilenet/model.py", ex / "mobilenet/user.mask")]
    if not a.quick:
        configs.append(("resnet18", ex / "resnet18/model.py", None))
    rows = [measure(n, m, k, a.batches, a.sr_seeds) for n, m, k in configs]
    print("criterion (verify's pass/fail): seed-averaged fixed point vs float back-propagation "
          "through the device's forward, >= 0.98")
    for r in rows:
        print(f"  {r['config']:<22} min cos {r['devfwd_min_cos']:.4f} ({r['devfwd_worst']}) "
              f"{r['criterion']}")
    print("information: vs the float interpretation of the unquantized graph")
    print(f"{'config':<22} {'grads':>5} {'fixed min cos':>14} {'(<0.95)':>7}  "
          f"{'int8-forward floor':>18} {'(<0.95)':>7}  worst (fixed / floor)")
    for r in rows:
        print(f"{r['config']:<22} {r['gradients']:>5} {r['fixed_min_cos']:>14.4f} "
              f"{r['fixed_below_0.95']:>7}  {r['floor_min_cos']:>18.4f} "
              f"{r['floor_below_0.95']:>7}  {r['fixed_worst']} / {r['floor_worst']}")
    sane = [r["float_vs_autograd"] for r in rows if r["float_vs_autograd"] is not None]
    print(f"float interpretation vs PyTorch autograd: min cosine {min(sane):.6f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
