"""`edgec sweep SPEC.toml [-o OUT] [--jobs N | --address ADDR]` and
`edgec sweep --summary OUT`: a grid of fine-tuning runs over users, masks and
hyper-parameters (workflows/sweep*.py; docs/usage.md, "Sweeps")."""
from __future__ import annotations

import os
import time

from .cli_common import positive_int, progress

HELP = ("run a grid of on-device fine-tuning runs (users x masks x lr x steps x train "
        "patterns x label modes x targets) described by SPEC.toml: compile (or remask), "
        "fine-tune on the emulator, evaluate; one JSON file per point in OUT/points, "
        "finished points are skipped on a rerun; --summary prints the table, writes CSV "
        "and a plot of accuracy vs modeled cycles per step")


def add_sweep(p) -> None:
    p.add_argument("spec", nargs="?", help="sweep spec (TOML): model, users, grid")
    p.add_argument("-o", "--output", default="results", metavar="OUT",
                   help="results folder (default results): points/<id>.json (the "
                   "deterministic record), timing/<id>.json (seconds), masks/, summary.*")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--jobs", type=positive_int, default=None, metavar="N",
                      help="N local worker processes (default: serial, in this process)")
    mode.add_argument("--address", metavar="ADDR", help="run on the existing Ray cluster "
                      "at ADDR (host:port, or 'auto'); needs pip install 'edgec[cluster]'")
    mode.add_argument("--summary", metavar="OUT", help="no sweep: print the table of the "
                      "results folder OUT, write OUT/summary.csv and OUT/summary.png")
    p.add_argument("--csv", metavar="FILE", help="summary CSV (default OUT/summary.csv)")
    p.add_argument("--plot", metavar="FILE.png", help="summary plot (default "
                   "OUT/summary.png; needs matplotlib: pip install 'edgec[plot]')")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")


def cmd_sweep(args) -> int:
    from edgec.isa.errors import EdgecError

    from .sweep_summary import summary
    if args.summary:
        if args.spec:
            raise EdgecError("--summary OUT reads a results folder: drop SPEC.toml (or "
                             "drop --summary to run the sweep)")
        print(summary(args.summary, args.csv, args.plot))
        return 0
    if not args.spec:
        raise EdgecError("give a sweep spec (SPEC.toml), or --summary OUT")
    n = run_sweep(args)
    if n is not None:
        print(summary(args.output, args.csv, args.plot))
    return 0


def run_sweep(args):
    """Plan, skip the finished points, run the rest in the chosen mode."""
    from .sweep import clean_leftovers, pending_groups
    from .sweep_exec import check_ray, run_jobs, run_ray, run_serial
    from .sweep_plan import make_plan
    from .sweep_spec import load_spec
    if args.address:
        check_ray(args.address)
    log = progress(args.quiet).line       # what a sweep says stays, in a pipe too
    spec = load_spec(args.spec)
    plan = make_plan(spec, log)
    out = args.output
    _write_masks(out, plan)
    clean_leftovers(out)
    todo = pending_groups(plan.groups, out)
    total, left = len(plan.points), sum(len(m["points"]) for g in todo for m in g["masks"])
    log(f"{total} points in {len(plan.groups)} programs; {total - left} finished, "
        f"{left} to run" + (f" (--jobs {args.jobs})" if args.jobs else
                            f" (ray at {args.address})" if args.address else " (serial)"))
    t0 = time.perf_counter()
    if not todo:
        n = 0
    elif args.address:
        n = run_ray(todo, plan.shared, out, args.address, log)
    elif args.jobs:
        n = run_jobs(todo, plan.shared, out, args.jobs, log, args.quiet)
    else:
        n = run_serial(todo, plan.shared, out, log)
    log(f"ran {n} points in {time.perf_counter() - t0:.1f}s")
    return n


def _write_masks(out: str, plan) -> None:
    """OUT/masks/<label>.mask: the masks the points used (derived ones made visible)."""
    from .cli_common import atomic_write
    os.makedirs(os.path.join(out, "masks"), exist_ok=True)
    for label, m in plan.masks.items():
        data = m["text"].encode("utf-8")
        atomic_write(os.path.join(out, "masks", f"{label}.mask"), lambda f, d=data: f.write(d))


COMMANDS = {"sweep": (dict(help=HELP, description=HELP), add_sweep, cmd_sweep)}
