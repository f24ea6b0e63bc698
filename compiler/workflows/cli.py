"""edgec command line: compile, remask, run, finetune, verify, disasm, ...

Every failure is one message on stderr ("edgec: error: ...") and a non-zero exit; outputs
are written atomically, so a failed run never leaves a half-written or damaged file.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time


def _atomic_write(path: str, write) -> None:
    """Write via a temporary file in the same folder, then rename: never half a file."""
    from edgec.isa.errors import EdgecError
    d = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise EdgecError(f"{path}: is a directory; give an output file name")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".edgec-", dir=d)
    except OSError as e:
        raise EdgecError(f"{path}: cannot write ({e.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _progress(quiet: bool):
    t0 = time.perf_counter()

    def log(stage: str) -> None:
        if not quiet:
            print(f"  [{time.perf_counter() - t0:6.2f}s] {stage}", file=sys.stderr)
    return log


def _compile(args, log, **over):
    """Compile args.model with the command line's options (`over` replaces some)."""
    from ..driver import compile_model
    if args.model.endswith((".ir", ".loop")):     # resume from an IR dump (--dump-ir)
        from edgec.isa.errors import EdgecError

        from ..resume import compile_ir
        if (args.mask or args.target or getattr(args, "dump_ir", None)
                or args.lr is not None or args.seed is not None
                or args.momentum is not None or args.weight_decay is not None
                or args.train or args.freeze or args.bias_only or args.classes
                or args.labels != "given" or args.loss != "ce"
                or args.threshold is not None or args.temperature is not None
                or getattr(args, "adapt_bn", False) or getattr(args, "remaskable", False)):
            raise EdgecError(f"{args.model}: an IR dump carries its own source, mask, target, "
                             "lr and seed (its 'source' line), its frozen parameters and its "
                             "loss target; drop --mask/--target/--lr/--seed/--dump-ir/--train/"
                             "--freeze/--bias-only/--classes/--labels/--loss/--threshold/"
                             "--temperature/--adapt-bn/--remaskable or edit the dump")
        return compile_ir(args.model, log)
    opt = dict(lr=0.01 if args.lr is None else args.lr,
               seed=args.seed or 0,
               log=log, dump_ir=getattr(args, "dump_ir", None),
               calib=getattr(args, "calib", None), train=args.train or (),
               freeze=args.freeze or (), bias_only=args.bias_only,
               classes=_class_list(args.classes), teacher=_teacher(args),
               adapt_bn=getattr(args, "adapt_bn", False), search=args.search,
               remaskable=getattr(args, "remaskable", False),
               momentum=args.momentum or 0.0, weight_decay=args.weight_decay or 0.0)
    opt = {"mask_path": args.mask, **opt, **over}
    return compile_model(args.model, target=args.target, **opt)


def _teacher(args) -> dict | None:
    """TeacherPass options of --labels pseudo / --loss kd (None: labels from the data)."""
    from edgec.isa.errors import EdgecError
    if args.loss == "kd" and args.labels == "pseudo":
        raise EdgecError("--loss kd takes its targets from the teacher's soft outputs; "
                         "drop --labels pseudo (or use --loss ce)")
    if args.labels != "pseudo" and args.threshold is not None:
        raise EdgecError("--threshold applies to --labels pseudo only")
    if args.loss != "kd" and args.temperature is not None:
        raise EdgecError("--temperature applies to --loss kd only")
    if args.labels == "pseudo":
        return {"target": "pseudo", "threshold": 0.5 if args.threshold is None
                else args.threshold}
    if args.loss == "kd":
        return {"target": "kd", "temp": 1.0 if args.temperature is None else args.temperature}
    return None


def _class_list(text: str | None):
    if text is None:
        return None
    from edgec.isa.errors import EdgecError
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise EdgecError(f"--classes {text!r}: expected class ids like 0,3,7") from None


def _pruned_summary(c) -> str | None:
    """What partial fine-tuning removed from the backward pass (None if nothing)."""
    pr = c.graph.meta.get("pruned") or {}
    saved, full = pr.get("saved"), pr.get("full")
    if not saved:
        return None
    trainable = sum(p.trainable for p in c.graph.params.values())
    pct = lambda k: 100.0 * saved[k] / max(1, full[k])  # noqa: E731
    return (f"partial fine-tuning ({trainable} trainable parameters): the backward pass "
            f"lost {pr['ops']} ops; saved {saved['macs']:,} MACs ({pct('macs'):.1f}%), "
            f"{saved['ddr_bytes']:,} DDR bytes ({pct('ddr_bytes'):.1f}%), "
            f"{saved['instructions']:,} instructions ({pct('instructions'):.1f}%)")


VERIFY_HELP = ("compile, then check emulator == reference bit for bit, and the "
               "fixed-point gradients (averaged over --sr-seeds stochastic-rounding seeds) "
               "against float back-propagation through the device's own int8 forward: "
               "cosine >= 0.98 for every gradient (the cosine to float autograd and the int8 "
               "floor are shown as information). Exit status: 0 if both pass, 1 if not "
               "bit-exact (or on an error), 3 if bit-exact but the fidelity criterion fails")


def _positive_int(text: str) -> int:
    """argparse type of verify --sr-seeds: an integer >= 1."""
    import argparse
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return v


def _program_seed(c) -> int:
    """The stochastic-rounding seed compiled into the program's data section."""
    s = c.program.symbol("rng_seed")
    return int.from_bytes(c.program.data[s["addr"]:s["addr"] + 4], "little")


def cmd_export_onnx(args) -> int:
    from ..backend.onnx_out import export_forward
    c = _compile(args, _progress(args.quiet))
    model = export_forward(c.graph)
    data = model.SerializeToString()
    _atomic_write(args.output, lambda f: f.write(data))
    print(f"wrote {args.output}: quantized forward, {len(model.graph.node)} ONNX nodes, "
          f"{len(model.graph.output)} int8 outputs; input x is int8 at exponent "
          f"{c.graph.values['x'].exp}")
    return 0


def cmd_ir(args) -> int:
    from ..ir.text import format_ir, read_ir
    sys.stdout.write(format_ir(read_ir(args.file)))
    return 0


def cmd_compile(args) -> int:
    c = _compile(args, _progress(args.quiet))
    _atomic_write(args.output, lambda f: f.write(c.blob))
    print(f"wrote {args.output}: {c.program.n_instr} instructions, {len(c.blob)} bytes, "
          f"{len(c.nests)} loop nests")
    pruned = _pruned_summary(c)
    if pruned:
        print(pruned)
    return 0


def cmd_remask(args) -> int:
    from ..remask import remask       # no torch, no compiler front end: milliseconds
    t0 = time.perf_counter()
    remask(args.program, args.mask, lambda write: _atomic_write(args.output, write))
    print(f"wrote {args.output}: {args.program} with the channel index tables of "
          f"{args.mask} ({1e3 * (time.perf_counter() - t0):.0f} ms, no recompile)")
    return 0


def cmd_run(args) -> int:
    import numpy as np
    from edgec.isa.container import load_program
    from edgec.isa.errors import EdgecError, TrapError
    from edgec.isa.target import load_target
    from edgec.runtime_emu.host import run_step
    prog = load_program(args.program)
    tg = load_target(args.target)
    try:
        with np.load(args.input, allow_pickle=False) as z:
            batch = {k: z[k] for k in z.files}
    except Exception as e:
        raise EdgecError(f"{args.input}: cannot read batch ({type(e).__name__}: {e})") from None
    for k in ("x",) if prog.meta.get("teacher") else ("x", "y"):
        if k not in batch:
            raise EdgecError(f"{args.input}: missing array {k!r} (needs x float32 and y int64)")
    from edgec.runtime_emu.host import exponent_moves, initial_xtab
    try:
        out, m = run_step(prog, tg, batch["x"], batch.get("y"), args.seed)
    except TrapError as e:
        raise EdgecError(f"{args.program}: {e}") from None
    _atomic_write(args.output, lambda f: np.savez(f, **out))
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


def cmd_finetune(args) -> int:
    import torch

    from edgec.isa.errors import EdgecError

    from .finetune import accuracy, check_data, finetune, load_data
    teacher = _teacher(args)                       # bad flag combinations: fail early
    if (args.adapt_steps is not None or args.teacher_bn is not None) and not (
            args.adapt_bn and teacher):
        raise EdgecError("--adapt-steps and --teacher-bn apply to --adapt-bn with --labels "
                         "pseudo / --loss kd (BatchNorm adaptation before the training steps)")
    if args.adapt_bn and teacher is None:
        return _finetune_adapt(args)
    log = _progress(args.quiet)
    x, y = load_data(args.data, need_y=teacher is None)   # unreadable / missing arrays too
    ev = load_data(args.eval) if args.eval else None
    if y is None and ev is None:
        raise EdgecError(f"{args.data} has no labels y: give --eval TEST.npz (with labels) "
                         "to measure accuracy")
    stats = _domain_bn(args, x, log) if args.adapt_bn else {}
    c = _compile(args, log, adapt_bn=False, **stats)
    if y is None:
        import numpy as np
        y = np.zeros(len(x), dtype=np.int64)     # not read by a teacher-target program
    shape = tuple(c.example_input.shape[1:])
    k = c.program.meta.get("class_ids") or int(c.program.meta["classes"])
    ids = c.program.meta.get("class_ids")
    x, y = check_data(x, y, shape, k, int(c.example_input.shape[0]), args.data)
    if ev is not None:
        ex, ey = check_data(ev[0], ev[1], shape, k, 1, args.eval)
    else:
        ex, ey = x, y
    from .floatmodel import prune_state_dict, pruned_channels
    pre = c.model
    if args.adapt_bn:                   # c.model has the adapted BatchNorm statistics
        from ..frontend.load import load_model
        pre = load_model(args.model)[0]
    acc0 = accuracy(pre, ex, ey, class_ids=ids)
    pruned = bool(pruned_channels(c))
    pacc0 = accuracy(c.model, ex, ey, prune_state_dict(c, pre.state_dict()),
                     class_ids=ids) if pruned else acc0
    bn_acc = accuracy(c.model, ex, ey, prune_state_dict(c, c.model.state_dict()),
                      class_ids=ids) if args.adapt_bn else None
    res = finetune(c, x, y, args.steps, seed=args.seed or 0,
                   log=(lambda line: None) if args.quiet else
                   (lambda line: print(f"  {line}", file=sys.stderr)))
    acc1 = accuracy(c.model, ex, ey, res.state_dict, class_ids=ids)
    _atomic_write(args.output, lambda f: torch.save(res.state_dict, f))
    on = args.eval or f"{args.data} (training data)"
    print(f"{args.steps} steps in {res.seconds:.2f}s ({len(res.params)} trained parameters); "
          f"mean loss first 10% {res.mean_loss('first'):.4f}, last 10% "
          f"{res.mean_loss('last'):.4f}")
    if c.program.meta.get("xregs"):
        print(res.moves_summary())
    print(f"accuracy on {on} ({len(ey)} rows, float32 PyTorch): pretrained {acc0:.2f}%"
          + (f", pruned by the mask {pacc0:.2f}%" if pruned else "")
          + (f", BN-adapted {bn_acc:.2f}%" if bn_acc is not None else "")
          + f", tuned {acc1:.2f}%")
    print(f"wrote {args.output}: tuned state_dict" + (" (pruned channels zeroed: the "
                                                      "user's pruned model)" if pruned else ""))
    return 0


def _domain_bn(args, x, log) -> dict:
    """finetune --adapt-bn with a teacher (BatchNorm per domain): the student's BatchNorm
    statistics adapted on the device to --data's x (--adapt-steps runs of the masked
    adapt-bn program; default two passes over x); with --teacher-bn adapted, the teacher's
    too (the same runs of the unmasked program).  compile_model's bn_stats options."""
    import numpy as np

    from .adapt import adapt_bn
    from .finetune import check_data
    out = {}
    for key, mask in (("bn_stats", args.mask), ("teacher_bn_stats", None)):
        if key == "teacher_bn_stats" and args.teacher_bn != "adapted":
            break
        a = _compile(args, log, adapt_bn=True, teacher=None, momentum=0.0, weight_decay=0.0,
                     train=(), freeze=(), bias_only=False, classes=None, mask_path=mask)
        shape, n = tuple(a.example_input.shape[1:]), int(a.example_input.shape[0])
        x, _ = check_data(x, np.zeros(len(x), np.int64), shape, 1, n, args.data)
        steps = args.adapt_steps if args.adapt_steps is not None else 2 * -(-len(x) // n)
        who = "student" if key == "bn_stats" else "teacher"
        res = adapt_bn(a, x, steps, log=(lambda line: None) if args.quiet else
                       (lambda line: print(f"  adapt-bn ({who}) {line}", file=sys.stderr)))
        out[key] = res.stats
        print(f"{steps} BatchNorm adaptation runs of the {who} in {res.seconds:.2f}s "
              f"({len(res.stats)} BatchNorm layers"
              + ("; the teacher keeps the pretrained statistics)"
                 if args.teacher_bn != "adapted" else ")"))
    return out


def _finetune_adapt(args) -> int:
    """finetune --adapt-bn: --steps adaptation runs on --data's x (labels not needed)."""
    import numpy as np
    import torch

    from .adapt import adapt_bn
    from .finetune import accuracy, check_data, load_data
    from .floatmodel import prune_state_dict
    log = _progress(args.quiet)
    x, _ = load_data(args.data, need_y=False)   # unreadable: fail early; labels not used
    ev = load_data(args.eval) if args.eval else None
    c = _compile(args, log)
    shape, n = tuple(c.example_input.shape[1:]), int(c.example_input.shape[0])
    x, _ = check_data(x, np.zeros(len(x), np.int64), shape, 1, n, args.data)
    res = adapt_bn(c, x, args.steps, log=(lambda line: None) if args.quiet else
                   (lambda line: print(f"  {line}", file=sys.stderr)))
    _atomic_write(args.output, lambda f: torch.save(res.state_dict, f))
    print(f"{args.steps} BatchNorm adaptation runs in {res.seconds:.2f}s "
          f"({len(res.stats)} BatchNorm layers, labels not used)")
    if ev is not None:
        ex, ey = check_data(ev[0], ev[1], shape, int(c.program.meta["classes"]), 1, args.eval)
        acc0 = accuracy(c.model, ex, ey, prune_state_dict(c, c.model.state_dict()))
        acc1 = accuracy(c.model, ex, ey, res.state_dict)
        print(f"accuracy on {args.eval} ({len(ey)} rows, float32 PyTorch, the user's pruned "
              f"model): before {acc0:.2f}%, BN-adapted {acc1:.2f}%")
    print(f"wrote {args.output}: state_dict with the adapted BatchNorm running statistics")
    return 0


def cmd_verify(args) -> int:
    from .verify import format_report, verify
    c = _compile(args, _progress(args.quiet))
    rep = verify(c, seed=_program_seed(c),
                 batch_seed=args.batch_seed, sr_seeds=args.sr_seeds)
    print(format_report(rep))
    pruned = _pruned_summary(c)
    if pruned:
        print(pruned)
    if not rep.bit_exact:
        return 1
    return 3 if rep.fidelity_ok is False else 0


def cmd_disasm(args) -> int:
    from edgec.isa.container import load_program
    from edgec.isa.disasm import disassemble
    for line in disassemble(load_program(args.program)):
        print(line)
    return 0


def cmd_report(args) -> int:
    import json

    from edgec.isa.container import load_program
    from edgec.isa.target import load_target

    from ..report import format_report, plot_roofline, program_report
    prog = load_program(args.program)
    rep = program_report(prog, load_target(args.target))
    if args.plot:           # before printing anything: a missing matplotlib fails cleanly
        _atomic_write(args.plot, lambda f: plot_roofline(rep, f))
    print(format_report(rep))
    if args.json:
        data = (json.dumps(rep, indent=1) + "\n").encode()
        _atomic_write(args.json, lambda f: f.write(data))
        print(f"wrote {args.json}")
    if args.plot:
        print(f"wrote {args.plot}")
    return 0


def cmd_asm(args) -> int:
    from ..asm import assemble_file
    blob = assemble_file(args.source)
    _atomic_write(args.output, lambda f: f.write(blob))
    print(f"wrote {args.output}: {len(blob)} bytes")
    return 0


def cmd_mask(args) -> int:
    from edgec.isa.errors import EdgecError

    from ..frontend.derive_mask import derive_mask, format_mask
    from ..frontend.load import load_model
    if not 0 < args.keep <= 1:      # also refuses nan
        raise EdgecError(f"--keep {args.keep}: must be a fraction in (0, 1], e.g. 0.5")
    if str(args.model).lower().endswith((".onnx", ".ir", ".loop")):
        raise EdgecError(f"{args.model}: edgec mask needs a model.py (its weights score the "
                         "channels)")
    model, example = load_model(args.model)
    mask = derive_mask(model, example, args.model, args.keep, args.by, args.global_)
    header = (f"edgec mask --keep {args.keep:g} --by {args.by}"
              f"{' --global' if args.global_ else ''}: {args.model}")
    text = format_mask(mask, header)
    if args.output:
        _atomic_write(args.output, lambda f: f.write(text.encode("utf-8")))
        print(f"wrote {args.output}: {len(mask)} layers masked, "
              f"{sum(map(len, mask.values()))} channels kept", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


COMMANDS = ("compile", "remask", "ir", "finetune", "run", "verify", "export-onnx", "disasm",
            "report", "asm", "mask")


class _Unbuilt:
    """A subcommand's parser that main() does not need: its options are not built."""

    def add_argument(self, *a, **k):
        pass

    def set_defaults(self, **k):
        pass


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line; with `only` (one of COMMANDS), the parser of that subcommand
    alone (argparse spends milliseconds building the others: remask starts faster)."""
    ap = argparse.ArgumentParser(
        prog="edgec",
        description="Compile a PyTorch model's fine-tuning step (forward, softmax "
                    "cross-entropy, backward, SGD) to an 8-bit edge training accelerator, "
                    "and run it on the bit-exact emulator.")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def subcommand(name: str, **kw):
        assert name in COMMANDS, name
        return sub.add_parser(name, **kw) if only in (None, name) else _Unbuilt()

    def common(p):
        p.add_argument("model", help="model.py defining `model` (nn.Module with pretrained "
                       "weights) and `example_input` (its batch size is compiled in); or a "
                       "float model.onnx (static input shape; no Python is executed); or a "
                       "dump FILE.ir / FILE.loop from --dump-ir to resume from")
        p.add_argument("--mask", help="user.mask: kept output channels per Conv2d/Linear "
                       "layer (default: keep everything)")
        p.add_argument("--target", help="target TOML file (default: the bundled "
                       "edge-dpu-16x16)")
        p.add_argument("--lr", type=float, default=None,
                       help="SGD learning rate (default 0.01)")
        p.add_argument("--seed", type=int, default=None,
                       help="stochastic-rounding seed stored in the program (default 0)")
        p.add_argument("--momentum", type=float, default=None, metavar="MU",
                       help="SGD momentum as torch.optim.SGD's (0 <= MU < 1, dampening 0, "
                       "no nesterov; default 0): each trainable parameter gets an int32 "
                       "momentum buffer mom:<name> in DDR that persists across steps")
        p.add_argument("--weight-decay", type=float, default=None, metavar="WD",
                       help="SGD weight decay (L2) as torch.optim.SGD's: WD * w is added to "
                       "the gradient (default 0; uses the momentum buffer)")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
        p.add_argument("--train", action="append", metavar="PATTERN", help="train only the "
                       "parameters whose name matches this glob (repeatable), e.g. "
                       "'layer4.*'; the others are frozen")
        p.add_argument("--freeze", action="append", metavar="PATTERN", help="freeze the "
                       "parameters matching this glob (repeatable; applied after --train)")
        p.add_argument("--bias-only", action="store_true", help="train only biases and "
                       "BatchNorm weights (combines with --train/--freeze)")
        p.add_argument("--classes", metavar="IDS", help="fine-tune for a subset of the "
                       "classes, e.g. 0,3,7: the classifier computes only their logits; "
                       "labels stay original class ids and must be among them")
        p.add_argument("--remaskable", action="store_true", help="fixed-point formats "
                       "that depend only on how many channels each masked layer keeps, not "
                       "on which (calibrated on the unmasked model and a seeded stand-in "
                       "mask), so `edgec remask` can give the program another user's mask; "
                       "costs some gradient fidelity")
        p.add_argument("--adapt-bn", action="store_true", help="instead of a training "
                       "step, a label-free BatchNorm adaptation program: the forward pass, "
                       "then every BatchNorm's frozen statistics move halfway to those of "
                       "the batch (no loss, no backward, no update)")
        p.add_argument("--search", choices=("greedy", "exhaustive"), default="greedy",
                       help="schedule search for the tile sizes of every MAC loop nest "
                       "against the pipeline cost model: greedy (default, fast) or "
                       "exhaustive (scores every candidate; for checking on small layers)")
        p.add_argument("--labels", choices=("given", "pseudo"), default="given",
                       help="where the training targets come from: 'given' (default) the "
                       "data's labels y; 'pseudo' self-training, computed ON THE DEVICE: "
                       "the argmax of a frozen teacher (a copy of the pretrained model, "
                       "unmasked, compiled into the program); samples whose teacher "
                       "confidence (softmax maximum) is below --threshold contribute no "
                       "gradient; y is not needed")
        p.add_argument("--threshold", type=float, default=None, metavar="P",
                       help="--labels pseudo: teacher confidence threshold in [0, 1] "
                       "(default 0.5)")
        p.add_argument("--loss", choices=("ce", "kd"), default="ce",
                       help="'ce' (default) softmax cross-entropy; 'kd' distillation from "
                       "the frozen teacher's soft targets (gradient softmax(z/T) - "
                       "softmax(t/T), mean over the batch; no labels needed)")
        p.add_argument("--temperature", type=float, default=None, metavar="T",
                       help="--loss kd: softmax temperature, a power of two in [1/64, 64] "
                       "(default 1)")
        p.add_argument("--calib", metavar="FILE.npz", help="MODEL.onnx only: calibration "
                       "batch (array x, the input's static shape); default: standard normal "
                       "from torch.Generator().manual_seed(0)")

    p = subcommand("compile", help="compile model.py (+ mask) to prog.bin; MODEL may "
                       "also be an IR dump (FILE.ir / FILE.loop) to resume the pipeline from, "
                       "using the source, lr and seed named in its header")
    common(p)
    p.add_argument("-o", "--output", default="prog.bin", help="output file (default prog.bin)")
    p.add_argument("--dump-ir", metavar="DIR", help="write the IR after every stage to DIR "
                   "(00-capture.ir 01-prune.ir 02-mask.ir 03-quantize.ir 04-update.ir "
                   "05-tile.loop), "
                   "each checked to read back identically")
    p.set_defaults(func=cmd_compile)

    p = subcommand("remask", help="give prog.bin another user's mask without "
                       "recompiling: rewrites its channel index tables; the new mask must "
                       "keep the same number of channels in every layer (the result equals "
                       "edgec compile with that mask, byte for byte)")
    p.add_argument("program", help="prog.bin written by edgec compile")
    p.add_argument("--mask", required=True, help="the other user.mask (same kept count per "
                   "layer as the program's mask)")
    p.add_argument("-o", "--output", required=True, help="output program (may be PROGRAM "
                   "itself)")
    p.set_defaults(func=cmd_remask)

    p = subcommand("ir", help="parse and check an IR dump (.ir/.loop) and print it "
                       "in canonical form")
    p.add_argument("file", help="FILE.ir or FILE.loop written by compile --dump-ir")
    p.set_defaults(func=cmd_ir)

    p = subcommand("finetune", help="compile once, then run --steps training steps on "
                       "the emulator (weights stay in emulator memory) and write the tuned "
                       "weights as a PyTorch state_dict")
    common(p)
    p.add_argument("--data", required=True, metavar="TRAIN.npz", help="x float32 (M, ...) "
                   "and y int64 (M,) (y optional with --labels pseudo / --loss kd); step i uses rows (i*N + j) %% M, j < N (N: the "
                   "compiled batch)")
    p.add_argument("--eval", metavar="TEST.npz", help="accuracy before/after on this data "
                   "(default: the training data; required when TRAIN.npz has no y)")
    p.add_argument("--steps", type=int, required=True, help="number of training steps "
                   "(step i uses stochastic-rounding seed SEED + i); with --adapt-bn, "
                   "adaptation runs (y in --data is then optional)")
    p.add_argument("--adapt-steps", type=_positive_int, default=None, metavar="K",
                   help="--adapt-bn with --labels pseudo / --loss kd (BatchNorm per domain): "
                   "first K adaptation runs of the student's BatchNorm statistics on --data "
                   "(default: two passes over it), then --steps training steps whose "
                   "teacher keeps the pretrained statistics (see --teacher-bn)")
    p.add_argument("--teacher-bn", choices=("pretrained", "adapted"), default=None,
                   help="with --adapt-bn and a teacher: the teacher's BatchNorm statistics, "
                   "the pretrained ones (default) or adapted to --data too (the unmasked "
                   "model, the same --adapt-steps runs)")
    p.add_argument("-o", "--output", default="tuned.pt", help="tuned state_dict (default "
                   "tuned.pt)")
    p.set_defaults(func=cmd_finetune)

    p = subcommand("run", help="execute prog.bin on the emulator for one batch")
    p.add_argument("program", help="prog.bin")
    p.add_argument("--input", required=True, help="batch.npz with x (float32) and y (int64; "
                   "optional for a program compiled with --labels pseudo or --loss kd)")
    p.add_argument("-o", "--output", default="out.npz", help="out.npz (default out.npz)")
    p.add_argument("--target", help="target TOML the program was compiled for")
    p.add_argument("--seed", type=int, default=None,
                   help="override the program's stochastic-rounding seed")
    p.set_defaults(func=cmd_run)

    p = subcommand("verify", description=VERIFY_HELP, help=VERIFY_HELP)
    common(p)
    p.add_argument("--batch-seed", type=int, default=0, help="seed of the random batch")
    p.add_argument("--sr-seeds", type=_positive_int, default=8, metavar="K",
                   help="stochastic-rounding seeds the fidelity criterion averages the "
                   "reference's gradients over: the program's seed and the K-1 after it "
                   "(default 8)")
    p.set_defaults(func=cmd_verify)

    p = subcommand("export-onnx", help="compile, then write the QUANTIZED forward "
                       "pass as ONNX (int8 input x, every forward int8 activation as an "
                       "output; onnxruntime reproduces the emulator bit for bit)")
    common(p)
    p.add_argument("-o", "--output", default="fwd.onnx", help="output file (default fwd.onnx)")
    p.set_defaults(func=cmd_export_onnx)

    p = subcommand("disasm", help="print prog.bin's instructions")
    p.add_argument("program", help="prog.bin")
    p.set_defaults(func=cmd_disasm)

    p = subcommand("report", help="per-layer/per-pattern performance summary of "
                       "prog.bin: MACs, DDR bytes, modeled cycles, MAC-array utilisation, "
                       "roofline bound; totals for forward, backward and update")
    p.add_argument("program", help="prog.bin")
    p.add_argument("--target", help="target TOML the program was compiled for")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="draw a roofline plot (needs "
                   "matplotlib)")
    p.set_defaults(func=cmd_report)

    p = subcommand("asm", help="assemble edgec assembly (the text `edgec disasm` "
                       "prints) back into prog.bin, byte for byte")
    p.add_argument("source", help="assembly file (FILE.s)")
    p.add_argument("-o", "--output", default="prog.bin", help="output file (default prog.bin)")
    p.set_defaults(func=cmd_asm)

    p = subcommand("mask", help="derive a user.mask from the model's weights: keep the "
                       "highest-scoring output channels of every maskable layer (residual "
                       "groups share one list; the logits layer is never masked)")
    p.add_argument("model", help="model.py defining `model` and `example_input`")
    p.add_argument("--keep", type=float, required=True, metavar="F",
                   help="fraction of channels kept, 0 < F <= 1 (per layer ceil(F*C), at "
                   "least 1)")
    p.add_argument("--by", choices=("l1", "bn-gamma"), default="l1",
                   help="channel score: L1 norm of the weight row (default), or |gamma| of "
                   "the BatchNorm2d right after the layer (network slimming; layers "
                   "without one fall back to l1)")
    p.add_argument("--global", dest="global_", action="store_true",
                   help="one budget over all layers (scores normalised by each layer's "
                   "mean) instead of F per layer; every layer keeps at least 1 channel")
    p.add_argument("-o", "--output", help="output mask file (default: print to stdout)")
    p.set_defaults(func=cmd_mask)
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
