"""The subcommands that start from a model (model.py, model.onnx or an IR dump): compile,
ir, verify, export-onnx, mask, finetune.  COMMANDS: name -> (parser keywords, the function
that adds its arguments, the function that runs it)."""
from __future__ import annotations

import sys

from .cli_common import (add_compile_options, atomic_write, compile_from_args, positive_int,
                         program_seed, progress, pruned_summary, teacher_options, warn_input)

VERIFY_HELP = ("compile, then check emulator == reference bit for bit, and the "
               "fixed-point gradients (averaged over --sr-seeds stochastic-rounding seeds) "
               "against float back-propagation through the device's own int8 forward: "
               "cosine >= 0.98 for every gradient (the cosine to float autograd and the int8 "
               "floor are shown as information). Exit status: 0 if both pass, 1 if not "
               "bit-exact (or on an error), 3 if bit-exact but the fidelity criterion fails")


def add_compile(p) -> None:
    add_compile_options(p)
    p.add_argument("-o", "--output", default="prog.bin", help="output file (default prog.bin)")
    p.add_argument("--dump-ir", metavar="DIR", help="write the IR after every stage to DIR "
                   "(00-capture.ir 01-prune.ir 02-mask.ir 03-quantize.ir 04-update.ir "
                   "05-tile.loop), "
                   "each checked to read back identically")


def cmd_compile(args) -> int:
    log = progress(args.quiet)
    c = compile_from_args(args, log)
    log.close()
    atomic_write(args.output, lambda f: f.write(c.blob))
    print(f"wrote {args.output}: {c.program.n_instr} instructions, {len(c.blob)} bytes, "
          f"{len(c.nests)} loop nests")
    pruned = pruned_summary(c)
    if pruned:
        print(pruned)
    return 0


def add_ir(p) -> None:
    p.add_argument("file", help="FILE.ir or FILE.loop written by compile --dump-ir")


def cmd_ir(args) -> int:
    from ..ir.text import format_ir
    from ..resume import read_checked
    sys.stdout.write(format_ir(read_checked(args.file)))
    return 0


def add_verify(p) -> None:
    add_compile_options(p)
    p.add_argument("--batch-seed", type=int, default=0, help="seed of the random batch")
    p.add_argument("--sr-seeds", type=positive_int, default=8, metavar="K",
                   help="stochastic-rounding seeds the fidelity criterion averages the "
                   "reference's gradients over: the program's seed and the K-1 after it "
                   "(default 8)")


def cmd_verify(args) -> int:
    from .verify import format_report, verify
    log = progress(args.quiet)
    c = compile_from_args(args, log)
    rep = verify(c, seed=program_seed(c),
                 batch_seed=args.batch_seed, sr_seeds=args.sr_seeds, log=log)
    log.close()
    print(format_report(rep))
    pruned = pruned_summary(c)
    if pruned:
        print(pruned)
    if not rep.bit_exact:
        return 1
    return 3 if rep.fidelity_ok is False else 0


def add_export_onnx(p) -> None:
    add_compile_options(p, training=False)
    p.add_argument("-o", "--output", default="fwd.onnx", help="output file (default fwd.onnx)")


def cmd_export_onnx(args) -> int:
    from ..backend.onnx_out import export_forward
    log = progress(args.quiet)
    c = compile_from_args(args, log)
    log.close()
    model = export_forward(c.graph)
    data = model.SerializeToString()
    atomic_write(args.output, lambda f: f.write(data))
    print(f"wrote {args.output}: quantized forward, {len(model.graph.node)} ONNX nodes, "
          f"{len(model.graph.output)} int8 outputs; input x is int8 at exponent "
          f"{c.graph.values['x'].exp}")
    return 0


def add_mask(p) -> None:
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
    p.add_argument("-q", "--quiet", action="store_true", help="no note on stderr of what "
                   "was written")


def cmd_mask(args) -> int:
    from edgec.isa.errors import EdgecError

    from ..mask.derive import derive_mask, format_mask
    from ..frontend.load import load_model
    if not 0 < args.keep <= 1:      # also refuses nan
        raise EdgecError(f"--keep {args.keep}: must be a fraction in (0, 1], e.g. 0.5")
    if str(args.model).lower().endswith((".onnx", ".ir", ".loop")):
        raise EdgecError(f"{args.model}: edgec mask needs a model.py (its weights score the "
                         "channels)")
    log = progress(args.quiet)
    log("load " + str(args.model))
    model, example = load_model(args.model)
    log(f"score channels ({args.by})")
    mask = derive_mask(model, example, args.model, args.keep, args.by, args.global_)
    log.close()
    header = (f"edgec mask --keep {args.keep:g} --by {args.by}"
              f"{' --global' if args.global_ else ''}: {args.model}")
    text = format_mask(mask, header)
    if args.output:
        atomic_write(args.output, lambda f: f.write(text.encode("utf-8")))
    if args.output and not args.quiet:
        print(f"wrote {args.output}: {len(mask)} layers masked, "
              f"{sum(map(len, mask.values()))} channels kept", file=sys.stderr)
    if not args.output:
        sys.stdout.write(text)
    return 0


def add_finetune(p) -> None:
    add_compile_options(p)
    p.add_argument("--data", required=True, metavar="TRAIN.npz", help="x float32 (M, ...) "
                   "and y int64 (M,) (y optional with --labels pseudo / --loss kd); step i "
                   "uses rows (i*N + j) %% M, j < N (N: the compiled batch)")
    p.add_argument("--eval", metavar="TEST.npz", help="accuracy before/after on this data "
                   "(default: the training data; required when TRAIN.npz has no y)")
    p.add_argument("--steps", type=int, required=True, help="number of training steps "
                   "(step i uses stochastic-rounding seed SEED + i); with --adapt-bn, "
                   "adaptation runs (y in --data is then optional)")
    p.add_argument("--adapt-steps", type=positive_int, default=None, metavar="K",
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


def cmd_finetune(args) -> int:
    import torch

    from edgec.isa.errors import EdgecError

    from .cli_common import load_data
    from .finetune import accuracy, check_data, finetune
    teacher = teacher_options(args)             # bad flag combinations: fail early
    if (args.adapt_steps is not None or args.teacher_bn is not None) and not (
            args.adapt_bn and teacher):
        raise EdgecError("--adapt-steps and --teacher-bn apply to --adapt-bn with --labels "
                         "pseudo / --loss kd (BatchNorm adaptation before the training steps)")
    if args.adapt_bn and teacher is None:
        return _finetune_adapt(args)
    log = progress(args.quiet)
    x, y = load_data(args.data, need_y=teacher is None)   # unreadable / missing arrays too
    ev = load_data(args.eval) if args.eval else None
    if y is None and ev is None:
        raise EdgecError(f"{args.data} has no labels y: give --eval TEST.npz (with labels) "
                         "to measure accuracy")
    stats = _domain_bn(args, x, log) if args.adapt_bn else {}
    c = compile_from_args(args, log, adapt_bn=False, **stats)
    if y is None:
        import numpy as np
        y = np.zeros(len(x), dtype=np.int64)     # not read by a teacher-target program
    shape = tuple(c.example_input.shape[1:])
    k = c.program.meta.get("class_ids") or int(c.program.meta["classes"])
    ids = c.program.meta.get("class_ids")
    x, y = check_data(x, y, shape, k, int(c.example_input.shape[0]), args.data)
    from edgec.runtime_emu.host import input_saturation
    warn_input(args.data, input_saturation(c.program, x))
    if ev is not None:
        ex, ey = check_data(ev[0], ev[1], shape, k, 1, args.eval)
    else:
        ex, ey = x, y
    from .floatmodel import prune_state_dict, pruned_channels
    pre = c.model
    if args.adapt_bn:                   # c.model has the adapted BatchNorm statistics
        from ..frontend.load import load_model
        pre = load_model(args.model)[0]
    log("accuracy before (float)")
    acc0 = accuracy(pre, ex, ey, class_ids=ids)
    pruned = bool(pruned_channels(c))
    pacc0 = accuracy(c.model, ex, ey, prune_state_dict(c, pre.state_dict()),
                     class_ids=ids) if pruned else acc0
    bn_acc = accuracy(c.model, ex, ey, prune_state_dict(c, c.model.state_dict()),
                      class_ids=ids) if args.adapt_bn else None
    log(f"{args.steps} training steps on the emulator")
    res = finetune(c, x, y, args.steps, seed=args.seed or 0, log=log.line)
    log("accuracy after (float)")
    acc1 = accuracy(c.model, ex, ey, res.state_dict, class_ids=ids)
    log.close()
    atomic_write(args.output, lambda f: torch.save(res.state_dict, f))
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
        a = compile_from_args(args, log, adapt_bn=True, teacher=None, momentum=0.0,
                              weight_decay=0.0, train=(), freeze=(), bias_only=False,
                              classes=None, mask_path=mask)
        shape, n = tuple(a.example_input.shape[1:]), int(a.example_input.shape[0])
        x, _ = check_data(x, np.zeros(len(x), np.int64), shape, 1, n, args.data)
        steps = args.adapt_steps if args.adapt_steps is not None else 2 * -(-len(x) // n)
        who = "student" if key == "bn_stats" else "teacher"
        res = adapt_bn(a, x, steps, log=lambda line: log.line(f"adapt-bn ({who}) {line}"))
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
    from .cli_common import load_data
    from .finetune import accuracy, check_data
    from .floatmodel import prune_state_dict
    log = progress(args.quiet)
    x, _ = load_data(args.data, need_y=False)   # unreadable: fail early; labels not used
    ev = load_data(args.eval) if args.eval else None
    c = compile_from_args(args, log)
    shape, n = tuple(c.example_input.shape[1:]), int(c.example_input.shape[0])
    x, _ = check_data(x, np.zeros(len(x), np.int64), shape, 1, n, args.data)
    log(f"{args.steps} BatchNorm adaptation runs on the emulator")
    res = adapt_bn(c, x, args.steps, log=log.line)
    log.close()
    atomic_write(args.output, lambda f: torch.save(res.state_dict, f))
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


COMMANDS = {
    "compile": (dict(help="compile model.py (+ mask) to prog.bin; MODEL may "
                       "also be an IR dump (FILE.ir / FILE.loop) to resume the pipeline from, "
                       "using the source, lr and seed named in its header"),
            add_compile, cmd_compile),
    "ir": (dict(help="parse and check an IR dump (.ir/.loop) and print it "
                       "in canonical form"),
            add_ir, cmd_ir),
    "verify": (dict(description=VERIFY_HELP, help=VERIFY_HELP),
            add_verify, cmd_verify),
    "export-onnx": (dict(help="compile, then write the QUANTIZED forward "
                       "pass as ONNX (int8 input x, every forward int8 activation as an "
                       "output; onnxruntime reproduces the emulator bit for bit)"),
            add_export_onnx, cmd_export_onnx),
    "mask": (dict(help="derive a user.mask from the model's weights: keep the "
                       "highest-scoring output channels of every maskable layer (residual "
                       "groups share one list; the logits layer is never masked)"),
            add_mask, cmd_mask),
    "finetune": (dict(help="compile once, then run --steps training steps on "
                       "the emulator (weights stay in emulator memory) and write the tuned "
                       "weights as a PyTorch state_dict"),
            add_finetune, cmd_finetune),
}
