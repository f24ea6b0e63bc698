"""edgec command line: compile, remask, run, finetune, verify, disasm, ...

Every failure is one message on stderr ("edgec: error: ...") and a non-zero exit; outputs
are written atomically, so a failed run never leaves a half-written or damaged file.  The
subcommands live in cli_model.py (those that start from a model), cli_program.py (those
that start from a program) and cli_sweep.py (grids of fine-tuning runs); their shared options in
cli_common.py.
"""
from __future__ import annotations

import argparse
import sys

from . import cli_model, cli_program, cli_sweep

# name -> (parser keywords, add_arguments(parser), run(args) -> exit status), in --help order
SUBCOMMANDS = {**cli_model.COMMANDS, **cli_program.COMMANDS, **cli_sweep.COMMANDS}
COMMANDS = ("compile", "remask", "ir", "finetune", "run", "verify", "export-onnx", "disasm",
            "report", "asm", "mask", "sweep")
assert set(COMMANDS) == set(SUBCOMMANDS)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line; with `only` (one of COMMANDS), the arguments of that subcommand
    alone (argparse spends milliseconds building the others: remask starts faster)."""
    ap = argparse.ArgumentParser(
        prog="edgec",
        description="Compile a PyTorch model's fine-tuning step (forward, softmax "
                    "cross-entropy, backward, SGD) to an 8-bit edge training accelerator, "
                    "and run it on the bit-exact emulator.")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for name in COMMANDS:
        kw, add_arguments, run = SUBCOMMANDS[name]
        p = sub.add_parser(name, **kw)
        if only in (None, name):
            add_arguments(p)
            p.set_defaults(func=run)
    return ap


def main(argv=None) -> int:
    from edgec.isa.errors import EdgecError
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv[0] if argv and argv[0] in COMMANDS else None).parse_args(argv)
    try:
        return args.func(args)
    except EdgecError as e:
        print(f"edgec: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("edgec: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:             # e.g. `edgec disasm prog.bin | head`
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # no flush error
        return 141


if __name__ == "__main__":
    sys.exit(main())
