"""The subcommands that start from a program (prog.bin, or its assembly): remask, run,
disasm, report, asm.  COMMANDS: name -> (parser keywords, the function that adds its
arguments, the function that runs it)."""
from __future__ import annotations

import time

from .cli_common import atomic_write, load_data, warn_input


def add_remask(p) -> None:
    p.add_argument("program", help="prog.bin written by edgec compile")
    p.add_argument("--mask", required=True, help="the other user.mask (same kept count per "
                   "layer as the program's mask)")
    p.add_argument("-o", "--output", required=True, help="output program (may be PROGRAM "
                   "itself)")


def cmd_remask(args) -> int:
    from ..mask.remask import remask       # no torch, no compiler front end: milliseconds
    t0 = time.perf_counter()
    remask(args.program, args.mask, lambda write: atomic_write(args.output, write))
    print(f"wrote {args.output}: {args.program} with the channel index tables of "
          f"{args.mask} ({1e3 * (time.perf_counter() - t0):.0f} ms, no recompile)")
    return 0


def add_run(p) -> None:
    p.add_argument("program", help="prog.bin")
    p.add_argument("--input", required=True, help="batch.npz with x (float32) and y (int64; "
                   "optional for a program compiled with --labels pseudo or --loss kd)")
    p.add_argument("-o", "--output", default="out.npz", help="out.npz (default out.npz)")
    p.add_argument("--target", help="target TOML (or bundled target name) the program "
                   "was compiled for (default: the bundled target of its fingerprint)")
    p.add_argument("--seed", type=int, default=None,
                   help="override the program's stochastic-rounding seed")
    p.add_argument("--interpret", action="store_true", help="run the emulator's "
                   "interpreter alone, without translation blocks (the same results)")


def cmd_run(args) -> int:
    import numpy as np
    from edgec.isa.container import load_program
    from edgec.isa.errors import EdgecError, TrapError
    from edgec.isa.target import target_of_program
    from edgec.runtime_emu.host import run_step
    prog = load_program(args.program)
    tg = target_of_program(prog.target_fp, args.target)
    same_target(args.program, prog, tg)
    x, y = load_data(args.input, need_y=not prog.meta.get("teacher"))
    from edgec.runtime_emu.host import exponent_moves, initial_xtab, input_saturation
    warn_input(args.input, input_saturation(prog, x))
    try:
        out, m = run_step(prog, tg, x, y, args.seed,
                          translate=False if args.interpret else None)
    except TrapError as e:
        raise EdgecError(f"{args.program}: {e}") from None
    atomic_write(args.output, lambda f: np.savez(f, **out))
    c = m.counters
    print(f"wrote {args.output}: loss {float(out['loss']):.4f}; {c['instructions']} "
          f"instructions, {c['macs']} MACs, {c['cycles']} cycles, "
          f"{c['ddr_read_bytes']} DDR bytes read, {c['ddr_write_bytes']} written")
    if "xtab" in out:
        moves = exponent_moves(initial_xtab(prog), out["xtab"], prog.meta["xregs"])
        print(f"exponent moves: {len(moves)}" + "".join(
            f"\n  {mv['name']}: 2^{mv['old']} -> 2^{mv['new']} ({mv['saturations']} "
            f"saturated, max |q| {mv['max_q']})" for mv in moves))
    return 0


def same_target(path: str, prog, tg) -> None:
    """A program runs (and is reported) only on the target it was compiled for."""
    from edgec.isa.errors import EdgecError
    from edgec.isa.target import mismatch
    if bytes(prog.target_fp) != tg.fingerprint:
        raise EdgecError(f"{path}: {mismatch(prog, tg)}")


def add_disasm(p) -> None:
    p.add_argument("program", help="prog.bin")


def cmd_disasm(args) -> int:
    from edgec.isa.container import load_program
    from edgec.isa.disasm import disassemble
    for line in disassemble(load_program(args.program)):
        print(line)
    return 0


def add_report(p) -> None:
    p.add_argument("program", help="prog.bin")
    p.add_argument("--target", help="target TOML (or bundled target name) the program "
                   "was compiled for (default: the bundled target of its fingerprint)")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    p.add_argument("--csv", metavar="FILE", help="also write one row per layer and pattern "
                   "as CSV (ops, channels, tiles, buffer occupancy, DDR bytes, MACs, cycles, "
                   "utilisation)")
    p.add_argument("--plot", metavar="FILE.png", help="draw a roofline plot (needs "
                   "matplotlib: pip install 'edgec[plot]')")


def cmd_report(args) -> int:
    import json

    from edgec.isa.container import load_program
    from edgec.isa.target import target_of_program

    from ..report import format_report, layer_csv, plot_roofline, program_report
    prog = load_program(args.program)
    tg = target_of_program(prog.target_fp, args.target)
    same_target(args.program, prog, tg)
    rep = program_report(prog, tg)
    print(format_report(rep))
    outputs = [(args.json, lambda f: f.write((json.dumps(rep, indent=1) + "\n").encode())),
               (args.csv, lambda f: f.write(layer_csv(rep).encode())),
               (args.plot, lambda f: plot_roofline(rep, f))]     # the plot last: it may
    for path, write in outputs:                                   # lack matplotlib
        if path:
            atomic_write(path, write)
            print(f"wrote {path}")
    return 0


def add_asm(p) -> None:
    p.add_argument("source", help="assembly file (FILE.s)")
    p.add_argument("-o", "--output", default="prog.bin", help="output file (default prog.bin)")


def cmd_asm(args) -> int:
    from ..asm import assemble_file
    blob = assemble_file(args.source)
    atomic_write(args.output, lambda f: f.write(blob))
    print(f"wrote {args.output}: {len(blob)} bytes")
    return 0


COMMANDS = {
    "remask": (dict(help="give prog.bin another user's mask without "
                       "recompiling: rewrites its channel index tables; the new mask must "
                       "keep the same number of channels in every layer (the result equals "
                       "edgec compile with that mask, byte for byte)"),
            add_remask, cmd_remask),
    "run": (dict(help="execute prog.bin on the emulator for one batch"),
            add_run, cmd_run),
    "disasm": (dict(help="print prog.bin's instructions"),
            add_disasm, cmd_disasm),
    "report": (dict(help="per-layer/per-pattern performance summary of "
                       "prog.bin: MACs, DDR bytes, modeled cycles, MAC-array utilisation, "
                       "roofline bound; totals for forward, backward and update"),
            add_report, cmd_report),
    "asm": (dict(help="assemble edgec assembly (the text `edgec disasm` "
                       "prints) back into prog.bin, byte for byte"),
            add_asm, cmd_asm),
}
