"""Byte-identity check for compiler changes that must not change results (e.g. speed work).

    python benchmarks/same_bytes.py record hashes.json [--only NAME ...]
    python benchmarks/same_bytes.py check  hashes.json [--only NAME ...]

Compiles a fixed set of programs (every example, with and without masks, partial
fine-tuning, --classes, --adapt-bn, --labels pseudo, --loss kd, --remaskable) in this
process and records the SHA-256 of each prog.bin to the JSON file (`record`), or compares
against a file recorded before the change (`check`; exit status 1 on any difference).
The hashes are those of one checkout, so compare a branch against itself: record before
the change, check after.  Compile seconds are printed per program.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EX = ROOT / "examples"

# name -> compile_model arguments (model path, then keyword arguments)
PROGRAMS = {
    "lenet": (EX / "lenet/model.py", {}),
    "lenet-mask": (EX / "lenet/model.py", {"mask_path": EX / "lenet/user.mask"}),
    "lenet-train-fc": (EX / "lenet/model.py", {"mask_path": EX / "lenet/user.mask",
                                              "train": ("fc*",)}),
    "lenet-classes": (EX / "lenet/model.py", {"classes": [0, 3, 7]}),
    "lenet-kd": (EX / "lenet/model.py", {"teacher": {"target": "kd", "temp": 2.0}}),
    "lenet-remaskable": (EX / "lenet/model.py", {"mask_path": EX / "lenet/user.mask",
                                                "remaskable": True}),
    "mobilenet": (EX / "mobilenet/model.py", {}),
    "mobilenet-mask": (EX / "mobilenet/model.py", {"mask_path": EX / "mobilenet/user.mask"}),
    "mobilenet-adapt-bn": (EX / "mobilenet/model.py", {"adapt_bn": True}),
    "mobilenet-pseudo": (EX / "mobilenet/model.py",
                         {"mask_path": EX / "mobilenet/user.mask",
                          "teacher": {"target": "pseudo", "threshold": 0.5}}),
    "personalize": (EX / "personalize/model.py", {"mask_path": EX / "personalize/user.mask"}),
    "personalize-bias-only": (EX / "personalize/model.py", {"bias_only": True}),
    "resnet18": (EX / "resnet18/model.py", {}),
    "resnet18-mask": (EX / "resnet18/model.py", {"mask_path": EX / "resnet18/user.mask"}),
}


def program_hashes(names) -> dict[str, str]:
    from edgec.compiler.driver import compile_model
    out = {}
    for name in names:
        path, kw = PROGRAMS[name]
        kw = {k: str(v) if isinstance(v, Path) else v for k, v in kw.items()}
        t = time.perf_counter()
        c = compile_model(str(path), **kw)
        out[name] = hashlib.sha256(c.blob).hexdigest()
        print(f"{name:24s} {time.perf_counter() - t:6.1f}s  {c.program.n_instr:>8,} instr  "
              f"{out[name][:16]}", file=sys.stderr, flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=("record", "check"))
    ap.add_argument("file", help="JSON file of hashes (written by record, read by check)")
    ap.add_argument("--only", nargs="+", choices=sorted(PROGRAMS), help="these programs only")
    args = ap.parse_args(argv)
    names = args.only or list(PROGRAMS)
    got = program_hashes(names)
    if args.mode == "record":
        old = json.loads(Path(args.file).read_text()) if Path(args.file).exists() else {}
        Path(args.file).write_text(json.dumps({**old, **got}, indent=1, sort_keys=True) + "\n")
        print(f"recorded {len(got)} hashes in {args.file}")
        return 0
    want = json.loads(Path(args.file).read_text())
    bad = [n for n in names if want.get(n) != got[n]]
    for n in names:
        print(f"{n:24s} {'same' if n not in bad else 'DIFFERENT' if n in want else 'unrecorded'}")
    print("all byte-identical" if not bad else f"{len(bad)} of {len(names)} differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
