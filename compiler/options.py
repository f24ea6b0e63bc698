"""The options of one compile, in one object, checked once (`CompileOptions.check`) before
anything is compiled.  The command line (compiler/workflows/cli_common.py) and the library
(`compile_model(path, mask, target, lr=..., ...)`) both build one; a message names an option
as the command line spells it (`lr` is --lr).  Checks that need the model (class ids
against the logits, parameter patterns) stay where the model is known."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from edgec.isa.errors import EdgecError

SEARCH_MODES = ("greedy", "exhaustive")
TEACHER_TARGETS = ("pseudo", "kd")


@dataclass(frozen=True)
class CompileOptions:
    lr: float = 0.01                    # SGD learning rate
    seed: int = 0                       # stochastic-rounding seed stored in the program
    train: tuple[str, ...] = ()         # train only parameters matching these globs
    freeze: tuple[str, ...] = ()        # freeze parameters matching these globs
    bias_only: bool = False             # train only biases and BatchNorm weights
    classes: tuple[int, ...] | None = None  # fine-tune for this subset of the classes
    adapt_bn: bool = False              # a BatchNorm adaptation program instead of a step
    search: str = "greedy"              # schedule search of the MAC nests' tile sizes
    teacher: dict | None = None         # TeacherPass fields: {"target": "pseudo", ...}
    remaskable: bool = False            # formats that depend only on the kept counts
    momentum: float = 0.0               # torch.optim.SGD's (dampening 0, no nesterov)
    weight_decay: float = 0.0           # torch.optim.SGD's L2 term
    calib: str | None = None            # ONNX input: calibration batch (.npz, array x)

    def __post_init__(self):
        for name in ("train", "freeze"):
            object.__setattr__(self, name, tuple(getattr(self, name) or ()))
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(self.classes))

    @classmethod
    def of(cls, options: "CompileOptions | None" = None, **kw) -> "CompileOptions":
        """`options` (default: the defaults) with the keyword arguments `kw` replaced; an
        unknown keyword is an error naming it."""
        known = {f.name for f in fields(cls)}
        bad = sorted(set(kw) - known)
        if bad:
            raise TypeError(f"unknown compile option(s) {', '.join(bad)} (known: "
                            f"{', '.join(sorted(known))})")
        return replace(options or cls(), **kw)

    def check(self) -> "CompileOptions":
        """Every rule on the options alone; raises EdgecError.  Returns self."""
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise EdgecError(f"--lr {self.lr}: the learning rate must be a number > 0")
        if not (isinstance(self.seed, int) and 0 <= self.seed < 2**32):
            raise EdgecError(f"--seed {self.seed}: the stochastic-rounding seed must be an "
                             f"integer in 0..{2**32 - 1} (it is stored as a uint32)")
        if not 0.0 <= self.momentum < 1.0:
            raise EdgecError(f"--momentum {self.momentum}: need 0 <= momentum < 1")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise EdgecError(f"--weight-decay {self.weight_decay}: need a weight decay >= 0")
        if self.search not in SEARCH_MODES:
            raise EdgecError(f"--search {self.search!r}: choose one of "
                             f"{', '.join(SEARCH_MODES)}")
        if self.adapt_bn:
            self._check_adapt_bn()
        if self.teacher:
            self._check_teacher()
        return self

    def _check_adapt_bn(self) -> None:
        if (self.train or self.freeze or self.bias_only or self.classes is not None
                or self.teacher):
            raise EdgecError("--adapt-bn compiles a label-free BatchNorm adaptation program; "
                             "it does not combine with --train/--freeze/--bias-only/--classes/"
                             "--labels pseudo/--loss kd (`edgec finetune --adapt-bn` with "
                             "--labels pseudo or --loss kd adapts the statistics first, then "
                             "fine-tunes with a teacher that keeps the pretrained ones)")
        if self.momentum or self.weight_decay:
            raise EdgecError("--adapt-bn compiles a program without an update; drop "
                             "--momentum/--weight-decay")

    def _check_teacher(self) -> None:
        t = self.teacher
        if t.get("target") not in TEACHER_TARGETS:
            raise EdgecError(f"unknown teacher target {t.get('target')!r} (choose from "
                             f"{', '.join(TEACHER_TARGETS)})")
        threshold, temp = float(t.get("threshold", 0.5)), float(t.get("temp", 1.0))
        if not 0.0 <= threshold <= 1.0:
            raise EdgecError(f"--threshold must be in [0, 1], got {threshold}")
        if not (temp > 0 and math.log2(temp) == round(math.log2(temp))
                and 1 / 64 <= temp <= 64):
            raise EdgecError(f"--temperature must be a power of two in [1/64, 64], got {temp}")
        if self.classes is not None:
            raise EdgecError("--classes cannot be combined with --labels pseudo / --loss kd "
                             "(the teacher predicts every class)")

    def dump_header(self) -> dict:
        """What an IR dump's header records of the options (compiler/ir/text.py)."""
        return dict(lr=float(self.lr), seed=int(self.seed),
                    **{k: float(v) for k, v in (("momentum", self.momentum),
                                                ("weight_decay", self.weight_decay)) if v})
