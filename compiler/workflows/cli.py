"""edgec command line: compile, remask, run, finetune, verify, disasm, ...

Every failure is one message on stderr ("edgec: error: ...") and a non-zero exit; outputs
are written atomically, so a failed run never leaves a half-written or damaged file.  The
subcommands live in cli_model.py (those that start from a model), cli_program.py (those
that start from a program) and cli_sweep.py (grids of fine-tuning runs); their shared options in
cli_common.py.
"""
from __future__ import annotations

import argparse
import difflib
import importlib.metadata
import re
import sys

from . import cli_model, cli_program, cli_sweep
from .cli_common import TRAINING_ONLY

# name -> (parser keywords, add_arguments(parser), run(args) -> exit status), in --help order
SUBCOMMANDS = {**cli_model.COMMANDS, **cli_program.COMMANDS, **cli_sweep.COMMANDS}
COMMANDS = ("compile", "remask", "ir", "finetune", "run", "verify", "export-onnx", "disasm",
            "report", "asm", "mask", "sweep")
assert set(COMMANDS) == set(SUBCOMMANDS)


class Parser(argparse.ArgumentParser):
    """argparse with edgec's error convention: one line "edgec: error: ...", naming the
    subcommand, with a did-you-mean for a misspelt option, command or choice and the
    subcommand's usage; exit status 2 (a command-line error)."""

    def error(self, message):
        cmd = self.prog[len("edgec "):] if self.prog.startswith("edgec ") else ""
        self.exit(2, f"edgec: error: {cmd + ': ' if cmd else ''}{message}"
                     f"{self._advice(message, cmd)}; usage: {self._short_usage(cmd)}\n")

    def _advice(self, message: str, cmd: str) -> str:
        m = re.match(r"(?:argument (\S+): )?invalid choice: '([^']*)' \(choose from (.*)\)",
                     message)
        if m:
            return _did_you_mean(m.group(2), re.findall(r"'([^']*)'", m.group(3)))
        m = re.match(r"unrecognized arguments: (.*)", message)
        if not m:
            return ""
        opts = [o for o in self._option_string_actions if o.startswith("--")]
        for word in m.group(1).split():
            name = word.split("=")[0]
            if not name.startswith("-"):
                continue
            if cmd == "export-onnx" and name in TRAINING_ONLY:
                return (f" ({name} shapes the training step; export-onnx writes the "
                        "quantized forward pass only)")
            hint = _did_you_mean(name, opts)
            if hint:
                return hint
        return ""

    def _short_usage(self, cmd: str) -> str:
        pos = [a.metavar or a.dest for a in self._actions
               if not a.option_strings and a.dest != "cmd"]
        if not cmd:
            return "edgec COMMAND ... (edgec --help lists the commands)"
        return f"edgec {cmd} {' '.join(p.upper() for p in pos)} [options] (edgec {cmd} --help)"


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def version() -> str:
    try:
        return importlib.metadata.version("edgec")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line; with `only` (one of COMMANDS), the arguments of that subcommand
    alone (argparse spends milliseconds building the others: remask starts faster)."""
    ap = Parser(
        prog="edgec",
        description="Compile a PyTorch model's fine-tuning step (forward, softmax "
                    "cross-entropy, backward, SGD) to an 8-bit edge training accelerator, "
                    "and run it on the bit-exact emulator.")
    ap.add_argument("--version", action="version", version=f"edgec {version()}")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    ap.subcommands = {}
    for name in COMMANDS:
        kw, add_arguments, run = SUBCOMMANDS[name]
        p = sub.add_parser(name, **kw)
        ap.subcommands[name] = p
        if only in (None, name):
            add_arguments(p)
            if "-q" not in p._option_string_actions:    # -q works on every command
                p.add_argument("-q", "--quiet", action="store_true",
                               help="accepted everywhere; this command prints no progress")
            p.set_defaults(func=run)
    return ap


def main(argv=None) -> int:
    from edgec.isa.errors import EdgecError
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = build_parser(argv[0] if argv and argv[0] in COMMANDS else None)
    args, extra = ap.parse_known_args(argv)
    if extra:       # reported by the subcommand: its options, its usage
        ap.subcommands[args.cmd].error(f"unrecognized arguments: {' '.join(extra)}")
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
    finally:
        from .progress import close_all
        close_all()


if __name__ == "__main__":
    sys.exit(main())
