"""The compile pipeline: model.py + user.mask -> graph passes -> loop IR -> prog.bin."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from edgec.isa.container import Program, write_program
from edgec.isa.errors import EdgecError
from edgec.isa.target import Target, load_target

from .backend.codegen import Emitter, generate
from .backend.memory import MemoryPlan, plan_memory
from .backend.stats import static_counts
from .backend.tiling import tile_graph
from .frontend.capture import capture, float_values
from .frontend.load import load_model
from .frontend.maskfile import drop_full, parse_mask
from .ir.graph import Graph
from .ir.loops import LoopNest
from .passes.adapt_bn import SCALE_HEADROOM, AdaptBNPass
from .passes.dynfmt import exponent_registers, is_dynamic
from .passes.mask import MaskPass
from .passes.prune import PrunePass, select_trainable
from .passes.quantize import QuantizePass, UpdatePass
from .passes.teacher import TeacherPass, teacher_logits
from .remask import remask_info


@dataclass
class Compiled:
    graph: Graph
    nests: list[LoopNest]
    mem: MemoryPlan
    emitter: Emitter
    program: Program
    blob: bytes
    target: Target
    model: torch.nn.Module
    example_input: torch.Tensor
    mask: dict[str, list[int]]
    float_graph: Graph | None = None    # the float graph after the mask pass (fidelity.py)
    float_params: dict | None = None    # the float values of its parameters and constants
    teacher_model: torch.nn.Module | None = None    # a teacher with its own BN statistics


def mask_layers(model: torch.nn.Module) -> tuple[dict[str, int], dict[str, str]]:
    """(maskable layer -> output channels, refused layer -> why it cannot be masked)."""
    out, refuse = {}, {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d) and m.groups > 1:
            refuse[name] = (f"it is a grouped convolution (groups={m.groups}); its channels "
                            "follow its input: mask the layer that feeds it")
        elif isinstance(m, torch.nn.Conv2d):
            out[name] = m.out_channels
        elif isinstance(m, torch.nn.Linear):
            out[name] = m.out_features
    return out, refuse


def compile_model(model_path: str, mask_path: str | None = None, target: str | None = None,
                  lr: float = 0.01, seed: int = 0, log=None,
                  dump_ir: str | None = None, calib: str | None = None,
                  train=(), freeze=(), bias_only: bool = False, classes=None,
                  adapt_bn: bool = False, search: str = "greedy",
                  teacher: dict | None = None, remaskable: bool = False,
                  momentum: float = 0.0, weight_decay: float = 0.0,
                  bn_stats: dict | None = None,
                  teacher_bn_stats: dict | None = None) -> Compiled:
    """Compile a model file (model.py or .onnx) into a Compiled program; the options are
    compile_module's.  `bn_stats` ({BatchNorm module: (running_mean, running_var)}): the
    student's BatchNorm statistics instead of the model's (adapted to the user's domain);
    with a teacher, the teacher gets its own BatchNorm constants (BatchNorm per domain):
    the model's statistics, or `teacher_bn_stats` where given."""
    log = log or (lambda msg: None)
    tg = load_target(target)
    graph = None
    if str(model_path).lower().endswith(".onnx"):   # float ONNX model: no user code runs
        from .frontend.onnx_in import load_onnx
        model, example, graph = load_onnx(model_path, calib)
    else:
        model, example = load_model(model_path)
    dump = None
    if dump_ir:     # --dump-ir DIR: one verified text file per stage (compiler/ir/text.py)
        import os

        from .ir.text import Dumper
        ab = lambda p: os.path.abspath(p) if p else None  # noqa: E731
        dump = Dumper(dump_ir, dict(model=ab(model_path), mask=ab(mask_path),
                                    target=ab(target), lr=float(lr), seed=int(seed),
                                    **{k: float(v) for k, v in (("momentum", momentum),
                                                                ("weight_decay", weight_decay))
                                       if v}))
    if adapt_bn and (train or freeze or bias_only or classes is not None or teacher):
        raise EdgecError("--adapt-bn compiles a label-free BatchNorm adaptation program; it "
                         "does not combine with --train/--freeze/--bias-only/--classes/"
                         "--labels pseudo/--loss kd (`edgec finetune --adapt-bn` with "
                         "--labels pseudo or --loss kd adapts the statistics first, then "
                         "fine-tunes with a teacher that keeps the pretrained ones)")
    if adapt_bn and (momentum or weight_decay):
        raise EdgecError("--adapt-bn compiles a program without an update; drop "
                         "--momentum/--weight-decay")
    frozen = frozen_params(model, train, freeze, bias_only)
    teacher_bn = None
    if teacher_bn_stats is not None and (bn_stats is None or not teacher):
        raise EdgecError("teacher BatchNorm statistics need the student's (bn_stats) and a "
                         "teacher (--labels pseudo / --loss kd)")
    if bn_stats is not None:
        teacher_bn = bn_statistics(with_bn_statistics(model, teacher_bn_stats or {}))
        model = with_bn_statistics(model, bn_stats)
    return compile_module(model, example, model_path, mask_path, tg, lr, seed, log, dump,
                          graph=graph, frozen=frozen, classes=classes, adapt_bn=adapt_bn,
                          search=search, teacher=teacher, remaskable=remaskable,
                          momentum=momentum, weight_decay=weight_decay,
                          teacher_bn=teacher_bn if teacher else None)


def bn_statistics(model: torch.nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{BatchNorm module: (running_mean, running_var)} of a model (copies)."""
    return {name: (m.running_mean.detach().clone(), m.running_var.detach().clone())
            for name, m in model.named_modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}


def with_bn_statistics(model: torch.nn.Module, stats: dict) -> torch.nn.Module:
    """A copy of `model` whose BatchNorms have the running statistics `stats` (a module
    the model does not have, or a shape that does not match, is an error)."""
    have = bn_statistics(model)
    out = copy.deepcopy(model)
    for name, (mean, var) in stats.items():
        if name not in have:
            raise EdgecError(f"BatchNorm statistics for {name!r}: the model has no "
                             f"BatchNorm of that name")
        bn = out.get_submodule(name)
        for buf, v in (("running_mean", mean), ("running_var", var)):
            t = torch.as_tensor(v)
            if tuple(t.shape) != tuple(getattr(bn, buf).shape):
                raise EdgecError(f"BatchNorm {name!r}: {buf} has shape {tuple(t.shape)}, "
                                 f"the model's is {tuple(getattr(bn, buf).shape)}")
            getattr(bn, buf).copy_(t.to(getattr(bn, buf).dtype))
    return out


def user_mask(mask: str | dict | None, model: torch.nn.Module, logits_layer: str) -> dict:
    """A user.mask path (parsed) or a {layer: kept} dict, without the lines that keep every
    channel (they are no mask)."""
    layers, refuse = mask_layers(model)
    if isinstance(mask, str):
        mask = parse_mask(mask, layers, logits_layer, refuse=refuse)
    mask = mask if isinstance(mask, dict) and hasattr(mask, "where") else dict(mask or {})
    return drop_full(mask, layers)


def frozen_params(model: torch.nn.Module, train=(), freeze=(), bias_only=False) -> set[str]:
    """Names of the parameters --train/--freeze/--bias-only leave frozen."""
    names = [k for k, _ in model.named_parameters()]
    if not (train or freeze or bias_only):
        return set()
    bn = {f"{m}.weight" for m, mod in model.named_modules()
          if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)}
    return set(names) - select_trainable(names, tuple(train), tuple(freeze), bias_only, bn)


def make_passes(mask, example, params, lr, adapt=None, abuf: int = 1 << 20,
                momentum: float = 0.0, weight_decay: float = 0.0) -> list:
    """The graph passes after capture, in order (names as in the IR dumps).  `adapt`
    ({BatchNorm module: eps}) makes a BatchNorm adaptation program instead of a training
    step: its last pass appends bn_adapt nodes instead of sgd nodes."""
    if adapt is None:
        return [PrunePass(), MaskPass(mask),
                QuantizePass(example, params, dynamic=True, abuf=abuf),
                UpdatePass(lr, dynamic=True, momentum=momentum, weight_decay=weight_decay)]
    # BN scales get SCALE_HEADROOM spare bits: adapted variances may be smaller
    room = {f"{bn}:scale": SCALE_HEADROOM for bn in adapt}
    return [PrunePass(), MaskPass(mask), QuantizePass(example, params, room),
            AdaptBNPass(adapt)]


PIPELINE = ("prune", "mask", "quantize", "update")


def compile_module(model: torch.nn.Module, example: torch.Tensor, model_path: str,
                   mask: str | dict | None, tg: Target, lr: float = 0.01, seed: int = 0,
                   log=None, dump=None, graph: Graph | None = None, frozen=(),
                   classes=None, adapt_bn: bool = False, search: str = "greedy",
                   teacher: dict | None = None, remaskable: bool = False,
                   momentum: float = 0.0, weight_decay: float = 0.0,
                   teacher_bn: dict | None = None) -> Compiled:
    """Compile an in-memory module; `mask` is a user.mask path or a {layer: kept} dict.
    `dump(stage, graph, nests=None)`, if given, sees the IR after every stage.
    `graph`, if given, is the float training graph (ONNX frontend) used instead of capture.
    `frozen`: parameter names that get no gradient and no update.
    `classes`: fine-tune for this subset of the classes only (the logits layer computes
    only their rows; labels are original class ids, mapped by the host).
    `adapt_bn`: compile the BatchNorm adaptation program (forward pass, then every BN's
    statistics re-estimated from the batch; no labels, no training) instead.
    `search`: schedule search of the MAC nests' tile sizes, greedy or exhaustive.
    `teacher`: the loss target comes from a frozen copy of the pretrained model instead of
    the labels: TeacherPass fields, e.g. {"target": "pseudo", "threshold": 0.5} or
    {"target": "kd", "temp": 2.0} (compiler/passes/teacher.py).
    `remaskable`: fixed-point formats that do not depend on which channels the mask keeps
    (only on how many), so `edgec remask` can give the program another user's mask.
    `momentum`, `weight_decay`: torch.optim.SGD's (dampening 0, no nesterov); either
    nonzero gives every trainable parameter a momentum buffer `mom:<name>` in DDR.
    `teacher_bn` ({BatchNorm module: (running_mean, running_var)}, with `teacher`): the
    teacher gets its own BatchNorm constants with these statistics, while the student's
    come from `model` (BatchNorm per domain)."""
    log = log or (lambda msg: None)
    dump = dump or (lambda *a: None)
    log("capture")
    g = graph if graph is not None else capture(model, example, model_path)
    adapt = None
    if adapt_bn:
        adapt = {name: float(m.eps) for name, m in model.named_modules()
                 if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
        frozen = set(g.params)
    full = copy.deepcopy(g) if frozen and not adapt_bn else None   # for the comparison
    for name in frozen:
        g.params[name].trainable = False
    if teacher:
        if classes is not None:
            raise EdgecError("--classes cannot be combined with --labels pseudo / --loss kd "
                             "(the teacher predicts every class)")
        g = TeacherPass(**teacher, own_bn=teacher_bn is not None).apply(g)
        if full is not None:        # the comparison graph: the same teacher, all trainable
            full = copy.deepcopy(g)
            for name in frozen:
                full.params[name].trainable = True
    if remaskable:
        g.meta["remaskable"] = True
    dump("capture", g)
    logits_layer = g.producer(g.outputs["logits"]).layer
    mask = user_mask(mask, model, logits_layer)
    if classes is not None:
        K = g.values[g.outputs["logits"]].shape[1]
        ids = sorted(set(int(c) for c in classes))
        bad = [c for c in ids if not 0 <= c < K]
        if bad or len(ids) < 2:
            raise EdgecError(f"--classes {','.join(map(str, classes))}: need at least two "
                             f"distinct class ids in [0, {K})")
        mask[logits_layer] = ids          # a row view of the classifier (internal)
        g.meta["class_ids"] = ids
    params = float_values(g, model, teacher_bn)
    opt = dict(momentum=momentum, weight_decay=weight_decay)
    c = _backend(g, mask, example, params, lr, seed, tg, model, log, dump, search, adapt,
                 **opt)
    c.float_params = params
    if teacher_bn is not None:
        c.teacher_model = with_bn_statistics(model, teacher_bn)
    if full is not None and g.meta["pruned"]["ops"]:
        log("backward without --train/--freeze (for the comparison)")
        ref = _backend(full, mask, example, params, lr, seed, tg, model, lambda m: None,
                       lambda *a: None, search, **opt)
        a, b = static_counts(ref.emitter.words), static_counts(c.emitter.words)
        c.graph.meta["pruned"]["saved"] = {k: a[k] - b[k] for k in a}
        c.graph.meta["pruned"]["full"] = a
    return c


def _backend(g: Graph, mask, example, params, lr, seed, tg, model, log, dump,
             search: str = "greedy", adapt=None, momentum: float = 0.0,
             weight_decay: float = 0.0) -> Compiled:
    for p in make_passes(mask, example, params, lr, adapt, tg.abuf, momentum, weight_decay):
        log(p.name)
        g = p.apply(g)
        try:
            g.verify()
        except ValueError as e:
            raise EdgecError(f"internal error after pass {p.name!r}: {e}") from None
        dump(p.name, g)
        if p.name == "mask":
            float_graph = copy.deepcopy(g)
    log("tile")
    nests = tile_graph(g, tg, search)
    dump("tile", g, nests)
    c = emit_program(g, nests, tg, lr, seed, model, example, mask, log)
    c.float_graph = float_graph
    return c


def emit_program(g: Graph, nests: list[LoopNest], tg: Target, lr: float, seed: int,
                 model, example, mask, log) -> Compiled:
    """The back end after tiling: memory plan, instruction selection, container."""
    log("codegen")
    regs = exponent_registers(g) if is_dynamic(g) else None
    mem = plan_memory(g, seed, tg.ddr_bytes, regs)
    em = generate(g, nests, mem, tg, regs)
    prog = Program(tg.fingerprint, em.code, bytes(mem.data), mem.size,
                   [s.to_json() for s in mem.symbols.values()],
                   program_meta(g, mem, em, lr, model))
    return Compiled(g, nests, mem, em, prog, write_program(prog), tg, model, example, mask)


def program_meta(g: Graph, mem: MemoryPlan, em: Emitter, lr: float, model) -> dict:
    params = []
    for p in g.params.values():
        if not p.trainable:
            continue
        sgd = next((n for n in g.nodes if n.op == "sgd" and n.inputs[0] == p.value), None)
        a = sgd.attrs if sgd else {}
        params.append({
            "name": p.name, "shape": list(p.shape), "master": f"master:{p.name}",
            "param": f"param:{p.name}", "grad": f"grad:{p.name}" if sgd else None,
            "out_tab": f"tab:{a['out_tab']}" if a.get("out_tab") else None,
            "in_tab": f"tab:{a['in_tab']}" if a.get("in_tab") and a.get("in_idx") else None,
            "in_block": a.get("in_block", 1)})
    logits = mem.of_value[g.outputs["logits"]].name
    opt = next(({"momentum": n.attrs["momentum"], "weight_decay": n.attrs["weight_decay"]}
                for n in g.nodes if n.op == "sgd" and n.attrs.get("mom")), {})
    return {"logits": logits, "params": params, "lr": lr, **opt,
            "batch": g.values["x"].shape[0], "classes": g.values[g.outputs["logits"]].shape[1],
            "origin": em.origin, "mask": g.meta.get("mask", {}),
            **({"xregs": em.regs.names} if em.regs is not None else {}),
            **({"remask": remask_info(*mask_layers(model),
                                      g.producer(g.outputs["logits"]).layer,
                                      g.meta.get("mask_ties", []))}
               if g.meta.get("remaskable") else {}),
            **({"class_ids": g.meta["class_ids"]} if "class_ids" in g.meta else {}),
            **({"adapt_bn": g.meta["adapt_bn"]} if "adapt_bn" in g.meta else {}),
            **({"teacher": g.meta["teacher"],
                "teacher_logits": mem.of_value[teacher_logits(g)].name}
               if "teacher" in g.meta else {})}
