"""What the edgec subcommands share: atomic output files, progress lines, the compile
options (their arguments and their translation into compile_model's) and small argument
types."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile


def atomic_write(path: str, write) -> None:
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
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes 0600; a plain open() follows the umask
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """The process's umask (reading it means setting it: set it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def progress(quiet: bool):
    """The stage log of a command (compiler/workflows/progress.py): call it with the name
    of each stage as it begins."""
    from .progress import Progress
    return Progress(quiet)


def warn_input(path: str, msg: str | None) -> None:
    """One warning line on stderr about the data in `path` (nothing when msg is None)."""
    if msg:
        print(f"edgec: warning: {path}: {msg}", file=sys.stderr)


def positive_int(text: str) -> int:
    """argparse type of an option that counts: an integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return v


# the options that only shape the training step (its update, seed and schedule), which
# export-onnx (the quantized forward) has not: name -> its value when absent
TRAINING_ONLY = {"--lr": None, "--seed": None, "--momentum": None, "--weight-decay": None,
                 "--train": None, "--freeze": None, "--bias-only": False, "--search": "greedy"}


def add_compile_options(p, training: bool = True) -> None:
    """The options of every command that compiles a model (compile, verify, finetune,
    export-onnx); without `training` (export-onnx) those of TRAINING_ONLY are left out (an
    error if given) and take their defaults."""
    def train_opt(*names, **kw):
        if training:
            p.add_argument(*names, **kw)
        else:
            p.set_defaults(**{names[0][2:].replace("-", "_"): TRAINING_ONLY[names[0]]})
    p.add_argument("model", help="model.py defining `model` (nn.Module with pretrained "
                   "weights) and `example_input` (its batch size is compiled in); or a "
                   "float model.onnx (static input shape; no Python is executed); or a "
                   "dump FILE.ir / FILE.loop from --dump-ir to resume from")
    p.add_argument("--mask", help="user.mask: kept output channels per Conv2d/Linear "
                   "layer (default: keep everything)")
    p.add_argument("--target", help="target TOML file or bundled target name: default "
                   "(edge-dpu-16x16, 256 MiB DDR, the default) or edge-dpu-16x16-2g "
                   "(the same with 2 GiB DDR)")
    train_opt("--lr", type=float, default=None,
                   help="SGD learning rate (default 0.01)")
    train_opt("--seed", type=int, default=None,
                   help="stochastic-rounding seed stored in the program (default 0)")
    train_opt("--momentum", type=float, default=None, metavar="MU",
                   help="SGD momentum as torch.optim.SGD's (0 <= MU < 1, dampening 0, "
                   "no nesterov; default 0): each trainable parameter gets an int32 "
                   "momentum buffer mom:<name> in DDR that persists across steps")
    train_opt("--weight-decay", type=float, default=None, metavar="WD",
                   help="SGD weight decay (L2) as torch.optim.SGD's: WD * w is added to "
                   "the gradient (default 0; uses the momentum buffer)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    train_opt("--train", action="append", metavar="PATTERN", help="train only the "
                   "parameters whose name matches this glob (repeatable), e.g. "
                   "'layer4.*'; the others are frozen")
    train_opt("--freeze", action="append", metavar="PATTERN", help="freeze the "
                   "parameters matching this glob (repeatable; applied after --train)")
    train_opt("--bias-only", action="store_true", help="train only biases and "
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
    train_opt("--search", choices=("greedy", "exhaustive"), default="greedy",
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


def compile_from_args(args, log, **over):
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
               classes=class_list(args.classes), teacher=teacher_options(args),
               adapt_bn=getattr(args, "adapt_bn", False), search=args.search,
               remaskable=getattr(args, "remaskable", False),
               momentum=args.momentum or 0.0, weight_decay=args.weight_decay or 0.0)
    opt = {"mask_path": args.mask, **opt, **over}
    return compile_model(args.model, target=args.target, **opt)


def teacher_options(args) -> dict | None:
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


def class_list(text: str | None):
    if text is None:
        return None
    from edgec.isa.errors import EdgecError
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise EdgecError(f"--classes {text!r}: expected class ids like 0,3,7") from None


def pruned_summary(c) -> str | None:
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


def program_seed(c) -> int:
    """The stochastic-rounding seed compiled into the program's data section."""
    s = c.program.symbol("rng_seed")
    return int.from_bytes(c.program.data[s["addr"]:s["addr"] + 4], "little")


def load_data(path: str, need_y: bool = True):
    """x and y of an npz file (raw; check_data validates them); y may be absent (None)
    unless ``need_y``.  A file of another kind (.npy, prog.bin, ...) is an error saying
    what it looks like."""
    import numpy as np

    from edgec.isa.errors import EdgecError
    from edgec.isa.filekind import NPZ, check_kind
    import os
    want = "an .npz with arrays x (float32) and y (int64 labels)" + (
        "" if need_y else ", y optional")
    if not os.path.isfile(path):
        raise EdgecError(f"{path}: no such file (expected {want})")
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:
        check_kind(path, want, (NPZ,))
        raise EdgecError(f"{path}: cannot read data ({type(e).__name__}: {e}); expected "
                         f"{want}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise EdgecError(f"{path}: this is a NumPy .npy file (one array of shape "
                         f"{list(z.shape)}), not {want}: write it with numpy.savez(path, "
                         "x=x, y=y)")
    try:
        with z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise EdgecError(f"{path}: cannot read data ({type(e).__name__}: {e})") from None
    for k in ("x", "y") if need_y else ("x",):
        if k not in arrays:
            raise EdgecError(f"{path}: missing array {k!r} (needs x float32 (M, ...) and "
                             f"y int64 (M,))")
    return arrays["x"], arrays.get("y")
