"""The models users bring: compile + verify torchvision and timm backbones.

    pip install --no-deps torchvision timm && pip install huggingface_hub safetensors pyyaml
    (--no-deps: PyPI's torchvision asks for a newer torch than the pinned 2.13.0, so it
    cannot be an extra of pyproject.toml; its model definitions work beside 2.13.0)
    python benchmarks/zoo.py [--json zoo.json] [--only NAME ...] [--variants plain,mask,onnx]
                             [--timeout S] [--sr-seeds K]

Every model of benchmarks/zoo_models.py (14 torchvision, 6 timm: random weights,
num_classes 10, eval mode, BatchNorm statistics calibrated on seeded synthetic images,
batch 2, input 32x32 or the smallest the model accepts) goes through, each in its own
process with a time limit:

    plain   edgec compile model.py + edgec verify
    mask    edgec mask --keep 0.5 (by L1 norm), then compile + verify with that mask
    onnx    torch.onnx.export (TorchScript exporter, opset 13), compile the .onnx + verify

and the table says: compile seconds, instructions, bit-exact, the fidelity criterion's
worst cosine (verify's pass/fail; with random weights it is information, not a target)
and the lowest int8 floor, or the first line of the error that stopped it.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
VARIANTS = ("plain", "mask", "onnx")
MODEL_PY = """import sys
sys.path.insert(0, {here!r})
from zoo_models import build
model, example_input = build({name!r})
"""


def one(name: str, variant: str, sr_seeds: int, target: str) -> dict:
    """Compile and verify one (model, variant) in this process."""
    from edgec.compiler.driver import compile_model
    from edgec.compiler.frontend.load import load_model
    from edgec.compiler.mask.derive import derive_mask, format_mask
    from edgec.compiler.workflows.verify import verify
    work = Path(tempfile.mkdtemp(prefix="edgec-zoo-"))
    src = work / "model.py"
    src.write_text(MODEL_PY.format(here=str(HERE), name=name))
    path, mask = str(src), None
    if variant == "mask":
        model, example = load_model(path)
        kept = derive_mask(model, example, path, 0.5)
        mask = work / "user.mask"
        mask.write_text(format_mask(kept, f"edgec mask --keep 0.5: {name}"))
    elif variant == "onnx":
        import torch
        model, example = load_model(path)
        path = str(work / "model.onnx")
        torch.onnx.export(model, (example,), path, dynamo=False, opset_version=13,
                          input_names=["x"], output_names=["logits"])
    t0 = time.perf_counter()
    c = compile_model(path, str(mask) if mask else None, target)
    compile_s = time.perf_counter() - t0
    rep = verify(c, sr_seeds=sr_seeds)
    worst = rep.fidelity_worst
    return {"compile_s": round(compile_s, 2), "instructions": c.program.n_instr,
            "bit_exact": rep.bit_exact, "tensors": len(rep.checked),
            "mismatches": len(rep.mismatches),
            "min_cosine": None if worst is None else round(worst[1], 4),
            "min_cosine_param": None if worst is None else worst[0],
            "min_floor": round(min(rep.floor.values()), 4) if rep.floor else None}


def run_case(name: str, variant: str, timeout: float, sr_seeds: int, target: str) -> dict:
    """one() in a child process: a crash, a hang or an error becomes a row."""
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, __file__, "--one", name, "--variant", variant,
                            "--sr-seeds", str(sr_seeds), "--target", target],
                           capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout after {timeout:.0f}s"}
    row = {"wall_s": round(time.perf_counter() - t0, 1)}
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode == 0 and lines:
        return {**row, "status": "ok", **json.loads(lines[-1])}
    err = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    named = [ln for ln in err if "error" in ln.lower()] or err
    return {**row, "status": "error",
            "error": named[-1].strip()[:300] if named else f"rc {r.returncode}"}


def _cell(row: dict) -> str:
    if row.get("status") != "ok":
        return row.get("error") or row.get("status", "?")
    cos = "-" if row["min_cosine"] is None else f"{row['min_cosine']:.3f}"
    flo = "-" if row["min_floor"] is None else f"{row['min_floor']:.3f}"
    exact = "bit-exact" if row["bit_exact"] else f"MISMATCH {row['mismatches']}/{row['tensors']}"
    return (f"{row['compile_s']:6.1f}s {row['instructions']:>8,} instr  {exact}  "
            f"min cos {cos}  min floor {flo}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write every row as JSON")
    ap.add_argument("--only", nargs="*", help="model names (e.g. tv:resnet18 timm:mixnet_s)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--timeout", type=float, default=900, help="seconds per case")
    ap.add_argument("--sr-seeds", type=int, default=8, help="verify's seeds (default 8)")
    ap.add_argument("--target", default="edge-dpu-16x16-2g", help="target (default: the "
                    "bundled 2 GiB one, which ResNet-50's training step needs)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, args.variant, args.sr_seeds, args.target)))
        return 0
    from zoo_models import names
    models = args.only or names()
    variants = [v for v in args.variants.split(",") if v]
    rows = []
    for name in models:
        for v in variants:
            row = {"model": name, "variant": v,
                   **run_case(name, v, args.timeout, args.sr_seeds, args.target)}
            rows.append(row)
            print(f"{name:<28} {v:<6} {_cell(row)}", flush=True)
    ok = sum(r.get("status") == "ok" and r["bit_exact"] for r in rows)
    print(f"{ok}/{len(rows)} cases compile and verify bit-exact")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
