"""remask benchmark (issue 6, acceptance 3): `edgec remask` vs `edgec compile`, at the
command line, on the same machine in the same run.

    python benchmarks/remask.py [--quick] [--runs 5] [--json remask.json]

For each example (personalize, mobilenet, resnet18; --quick leaves out resnet18):

    compile_s        wall time of `edgec compile model.py --mask user.mask --remaskable`
    remask_cli_s     median wall time of `edgec remask A.bin --mask other.mask -o R.bin`
                     (a fresh process and a new output file each time, as a user runs it)
    ratio            compile_s / remask_cli_s (the issue asks for >= 100)
    *_cpu_s, ratio_cpu   the same with CPU time (user + system) of the commands: steadier
                     than wall time on a shared host, where another process's load
                     stretches a long compile more than a short remask
    remask_call_s    median of the same work in-process (compiler.remask.remask writing
                     the file): what remask costs beyond starting Python and its imports

and, once for all examples, where a remask command's time goes (medians, same run):

    python_s         `python -c pass`: the interpreter's start-up and exit, the floor of
                     every command
    lark_s           `python -c "import lark"` minus python_s (the mask parser's library)
    imports_s        importing what remask needs (the CLI, the container, the mask parser
                     with its LALR tables loaded) minus lark_s and python_s
    equal            R.bin equals `edgec compile model.py --mask other.mask --remaskable`,
                     byte for byte

other.mask keeps, in every layer user.mask masks, as many channels as user.mask: the
channels user.mask drops first, then (if they are fewer) the lowest it keeps.  It is a
function of the layer's width and keep list only, so layers that meet at a residual add
get equal lists again.  The layers and widths come from the program's meta (no torch).

Commands run with Python's bytecode cache on (PYTHONDONTWRITEBYTECODE removed from their
environment), as an installed edgec runs: after the first run, modules load from .pyc
files and the mask grammar's LALR tables from compiler/grammars.py's cache.  Progress goes
to stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ("personalize", "mobilenet", "resnet18")
TARGET_RATIO = 100.0


def log(msg: str, t0=[time.perf_counter()]) -> None:       # noqa: B006 (start time)
    print(f"[{time.perf_counter() - t0[0]:7.1f}s] {msg}", file=sys.stderr, flush=True)


def edgec_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "edgec"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "edgec.compiler.workflows.cli"]


def env() -> dict:
    e = dict(os.environ)
    e.pop("PYTHONDONTWRITEBYTECODE", None)
    return e


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmd: list[str], cwd=None, cpu: list | None = None) -> float:
    """Wall seconds of a command; its CPU seconds (user + system) appended to ``cpu``."""
    c, t = _child_cpu(), time.perf_counter()
    r = subprocess.run(cmd, env=env(), cwd=cwd, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if cpu is not None:
        cpu.append(_child_cpu() - c)
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr}")
    return dt


def median_of(runs: int, fn) -> float:
    return statistics.median(fn() for _ in range(runs))


def other_mask(meta: dict) -> str:
    """A mask with user.mask's kept count in every layer it masks, other channels."""
    from edgec.compiler.mask.file import mask_name
    layers = meta["remask"]["layers"]
    lines = ["# benchmarks/remask.py: the same counts as user.mask, other channels"]
    for name, kept in sorted(meta["mask"].items()):
        dropped = [c for c in range(layers[name]) if c not in set(kept)]
        new = sorted((dropped + kept)[:len(kept)])
        lines.append(f"{mask_name(name)}: {' '.join(map(str, new))}")
    return "\n".join(lines) + "\n"


def bench(name: str, work: Path, runs: int) -> dict:
    from edgec.compiler.mask.remask import remask
    from edgec.isa.container import load_program
    ex = ROOT / "examples" / name
    a, b, r = work / f"{name}-a.bin", work / f"{name}-b.bin", work / f"{name}-r.bin"
    other = work / f"{name}-other.mask"
    edgec = edgec_cmd()
    log(f"{name}: compile with user.mask")
    compile_cpu, remask_cpu = [], []
    compile_s = timed(edgec + ["compile", "model.py", "--mask", "user.mask", "--remaskable",
                               "-q", "-o", str(a)], cwd=ex, cpu=compile_cpu)
    other.write_text(other_mask(load_program(str(a)).meta))
    log(f"{name}: compile with other.mask (for the byte comparison)")
    compile_b_s = timed(edgec + ["compile", "model.py", "--mask", str(other), "--remaskable",
                                 "-q", "-o", str(b)], cwd=ex)
    log(f"{name}: remask, {runs} runs each way")
    cmd = edgec + ["remask", str(a), "--mask", str(other), "-o", str(r)]
    timed(cmd)                                          # writes the bytecode cache

    def fresh_cli() -> float:          # a new output file each time, as compile writes one
        r.unlink()
        return timed(cmd, cpu=remask_cpu)
    cli = median_of(runs, fresh_cli)
    equal = r.read_bytes() == b.read_bytes()

    def call() -> float:
        r.unlink()
        t = time.perf_counter()
        remask(str(a), str(other), lambda write: _write(r, write))
        return time.perf_counter() - t
    in_process = median_of(runs, call)
    equal = equal and r.read_bytes() == b.read_bytes()
    return {"program_bytes": a.stat().st_size, "compile_s": compile_s,
            "compile_other_s": compile_b_s, "remask_cli_s": cli, "remask_call_s": in_process,
            "ratio": compile_s / cli, "compile_cpu_s": compile_cpu[0],
            "remask_cli_cpu_s": statistics.median(remask_cpu),
            "ratio_cpu": compile_cpu[0] / statistics.median(remask_cpu), "equal": equal}


def startup(runs: int) -> dict:
    """Medians of python start-up, `import lark` and remask's other imports (seconds)."""
    py = sys.executable
    need = ("import edgec.compiler.workflows.cli, edgec.compiler.mask.remask; "
            "from edgec.compiler.mask.file import _parser; _parser()")
    timed([py, "-c", need])                      # caches written
    python_s = median_of(runs, lambda: timed([py, "-c", "pass"]))
    lark_s = median_of(runs, lambda: timed([py, "-c", "import lark"])) - python_s
    imports_s = median_of(runs, lambda: timed([py, "-c", need])) - python_s - lark_s
    return {"python_s": python_s, "lark_s": lark_s, "imports_s": imports_s}


def _write(path: Path, write) -> None:
    with open(path, "wb") as f:
        write(f)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="leave out resnet18")
    ap.add_argument("--runs", type=int, default=5, help="remask runs per median (default 5)")
    ap.add_argument("--json", help="write the figures as JSON")
    args = ap.parse_args(argv)
    names = EXAMPLES[:2] if args.quick else EXAMPLES
    with tempfile.TemporaryDirectory(prefix="edgec-remask-") as d:
        res = {n: bench(n, Path(d), args.runs) for n in names}
    log("start-up breakdown")
    parts = startup(max(args.runs, 9))
    print(f"{'':22s} {'wall time':^27s}  {'CPU time':^27s}")
    print(f"{'example':12s} {'program':>9s} {'compile':>9s} {'remask':>9s} {'ratio':>7s}  "
          f"{'compile':>9s} {'remask':>9s} {'ratio':>7s} {'in-proc':>9s} {'equal':>6s}")
    for n, v in res.items():
        print(f"{n:12s} {v['program_bytes'] / 1e6:7.2f}MB {v['compile_s']:8.2f}s "
              f"{v['remask_cli_s'] * 1e3:7.1f}ms {v['ratio']:7.0f}  "
              f"{v['compile_cpu_s']:8.2f}s {v['remask_cli_cpu_s'] * 1e3:7.1f}ms "
              f"{v['ratio_cpu']:7.0f} {v['remask_call_s'] * 1e3:7.1f}ms {str(v['equal']):>6s}")
    print("a remask command: " + ", ".join(f"{k[:-2]} {v * 1e3:.1f} ms" for k, v in
                                             parts.items()) + " + its in-process work; "
          f"target ratio >= {TARGET_RATIO:.0f}")
    out = {"examples": res, **parts, "target_ratio": TARGET_RATIO,
           "runs": args.runs, "load_avg": os.getloadavg(), "cpus": os.cpu_count(),
           "machine": platform.platform()}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, sort_keys=True))
    bad = [n for n, v in res.items() if not v["equal"]]
    if bad:
        print(f"remask output differs from a fresh compile: {', '.join(bad)}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
