"""The compile pipeline: model.py + user.mask -> graph passes -> loop IR -> prog.bin."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from edgec.isa.container import Program, write_program
from edgec.isa.errors import EdgecError
from edgec.isa.interface import InterfaceError, check_interface
from edgec.isa.target import Target, load_target, recorded_name

from .backend.codegen import Emitter, generate
from .backend.memory import MemoryPlan, plan_memory
from .backend.stats import static_counts
from .backend.tiling import tile_graph
from .frontend.capture import capture, float_values
from .frontend.load import load_model
from .ir.graph import Graph
from .ir.loops import LoopNest
from .options import CompileOptions
from .passes.adapt_bn import SCALE_HEADROOM, AdaptBNPass
from .passes.dynfmt import exponent_registers, is_dynamic
from .passes.mask import MaskPass
from .passes.prune import PrunePass, select_trainable
from .passes.quantize import QuantizePass, UpdatePass
from .passes.shapes import verify_graph
from .passes.teacher import TeacherPass, teacher_logits
from .mask.layers import mask_layers, user_mask
from .mask.remask import remask_info


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


def compile_model(model_path: str, mask_path: str | None = None, target: str | None = None,
                  options: CompileOptions | None = None, *, log=None,
                  dump_ir: str | None = None, bn_stats: dict | None = None,
                  teacher_bn_stats: dict | None = None, **kw) -> Compiled:
    """Compile a model file (model.py or .onnx) with a user.mask (path, or None) for a
    target (TOML path, or None: the bundled default).  `options`: a CompileOptions, whose
    fields the keyword arguments `kw` replace (e.g. lr=0.05, teacher={...}); checked once,
    before the model is loaded.  `dump_ir`: write the IR after every stage to that folder.
    `bn_stats` ({BatchNorm module: (running_mean, running_var)}): the student's BatchNorm
    statistics instead of the model's (adapted to the user's domain); with a teacher, the
    teacher gets its own BatchNorm constants (BatchNorm per domain): the model's
    statistics, or `teacher_bn_stats` where given."""
    opts = CompileOptions.of(options, **kw).check()
    if teacher_bn_stats is not None and (bn_stats is None or not opts.teacher):
        raise EdgecError("teacher BatchNorm statistics need the student's (bn_stats) and a "
                         "teacher (--labels pseudo / --loss kd)")
    log = log or (lambda msg: None)
    tg = load_target(target)
    graph = None
    if str(model_path).lower().endswith(".onnx"):   # float ONNX model: no user code runs
        from .frontend.onnx_in import load_onnx
        model, example, graph = load_onnx(model_path, opts.calib)
    else:
        model, example = load_model(model_path)
    dump = None
    if dump_ir:     # --dump-ir DIR: one verified text file per stage (compiler/ir/text.py)
        import os

        from .ir.text import Dumper
        ab = lambda p: os.path.abspath(p) if p else None  # noqa: E731
        dump = Dumper(dump_ir, dict(model=ab(model_path), mask=ab(mask_path),
                                    target=ab(target), **opts.dump_header()))
    frozen = frozen_params(model, opts.train, opts.freeze, opts.bias_only)
    teacher_bn = None
    if bn_stats is not None:
        teacher_bn = bn_statistics(with_bn_statistics(model, teacher_bn_stats or {}))
        model = with_bn_statistics(model, bn_stats)
    return compile_module(model, example, model_path, mask_path, tg, opts, log=log,
                          dump=dump, graph=graph, frozen=frozen,
                          teacher_bn=teacher_bn if opts.teacher else None)


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


def frozen_params(model: torch.nn.Module, train=(), freeze=(), bias_only=False) -> set[str]:
    """Names of the parameters --train/--freeze/--bias-only leave frozen."""
    names = [k for k, _ in model.named_parameters()]
    if not (train or freeze or bias_only):
        return set()
    bn = {f"{m}.weight" for m, mod in model.named_modules()
          if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)}
    return set(names) - select_trainable(names, tuple(train), tuple(freeze), bias_only, bn)


def make_passes(mask, example, params, opts: CompileOptions, adapt=None,
                abuf: int = 1 << 20) -> list:
    """The graph passes after capture, in order (names as in the IR dumps).  `adapt`
    ({BatchNorm module: eps}) makes a BatchNorm adaptation program instead of a training
    step: its last pass appends bn_adapt nodes instead of sgd nodes."""
    if adapt is None:
        return [PrunePass(), MaskPass(mask),
                QuantizePass(example, params, dynamic=True, abuf=abuf),
                UpdatePass(opts.lr, dynamic=True, momentum=opts.momentum,
                           weight_decay=opts.weight_decay)]
    # BN scales get SCALE_HEADROOM spare bits: adapted variances may be smaller
    room = {f"{bn}:scale": SCALE_HEADROOM for bn in adapt}
    return [PrunePass(), MaskPass(mask), QuantizePass(example, params, room),
            AdaptBNPass(adapt)]


PIPELINE = ("prune", "mask", "quantize", "update")


def compile_module(model: torch.nn.Module, example: torch.Tensor, model_path: str,
                   mask: str | dict | None, tg: Target, options: CompileOptions | None = None,
                   *, log=None, dump=None, graph: Graph | None = None, frozen=(),
                   teacher_bn: dict | None = None, **kw) -> Compiled:
    """Compile an in-memory module; `mask` is a user.mask path or a {layer: kept} dict;
    `options` (a CompileOptions, its fields replaced by `kw`) as in compile_model.
    `dump(stage, graph, nests=None)`, if given, sees the IR after every stage.
    `graph`, if given, is the float training graph (ONNX frontend) used instead of capture.
    `frozen`: parameter names that get no gradient and no update (compile_model derives
    them from the options' train/freeze/bias_only).
    `teacher_bn` ({BatchNorm module: (running_mean, running_var)}, with a teacher): the
    teacher gets its own BatchNorm constants with these statistics, while the student's
    come from `model` (BatchNorm per domain)."""
    opts = CompileOptions.of(options, **kw).check()
    log = log or (lambda msg: None)
    dump = dump or (lambda *a: None)
    log("capture")
    g = graph if graph is not None else capture(model, example, model_path)
    adapt = None
    if opts.adapt_bn:
        adapt = {name: float(m.eps) for name, m in model.named_modules()
                 if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
        frozen = set(g.params)
    full = copy.deepcopy(g) if frozen and not opts.adapt_bn else None   # for the comparison
    for name in frozen:
        g.params[name].trainable = False
    if opts.teacher:
        g = TeacherPass(**opts.teacher, own_bn=teacher_bn is not None).apply(g)
        if full is not None:        # the comparison graph: the same teacher, all trainable
            full = copy.deepcopy(g)
            for name in frozen:
                full.params[name].trainable = True
    if opts.remaskable:
        g.meta["remaskable"] = True
    dump("capture", g)
    logits_layer = g.producer(g.outputs["logits"]).layer
    mask = user_mask(mask, model, logits_layer)
    if opts.classes is not None:
        mask[logits_layer] = g.meta["class_ids"] = class_ids(g, opts.classes)
    params = float_values(g, model, teacher_bn)
    c = _backend(g, mask, example, params, opts, tg, model, log, dump, adapt)
    c.float_params = params
    if teacher_bn is not None:
        c.teacher_model = with_bn_statistics(model, teacher_bn)
    if full is not None and g.meta["pruned"]["ops"]:
        log("backward without --train/--freeze (for the comparison)")
        ref = _backend(full, mask, example, params, opts, tg, model, lambda m: None,
                       lambda *a: None)
        a, b = static_counts(ref.emitter.words), static_counts(c.emitter.words)
        c.graph.meta["pruned"]["saved"] = {k: a[k] - b[k] for k in a}
        c.graph.meta["pruned"]["full"] = a
    return c


def class_ids(g: Graph, classes) -> list[int]:
    """The sorted class ids of --classes, checked against the graph's logits (they become a
    row view of the classifier: it computes only their logits)."""
    K = g.values[g.outputs["logits"]].shape[1]
    ids = sorted(set(int(c) for c in classes))
    bad = [c for c in ids if not 0 <= c < K]
    given = ",".join(map(str, classes))
    if bad:
        raise EdgecError(f"--classes {given}: class id{'s' * (len(bad) > 1)} "
                         f"{', '.join(map(str, bad))} out of range: the model's logits have "
                         f"K = {K} classes, ids 0-{K - 1}")
    if len(ids) < 2:
        raise EdgecError(f"--classes {given}: need at least two distinct class ids in "
                         f"[0, {K}) (a softmax over one class has no gradient)")
    return ids


def _backend(g: Graph, mask, example, params, opts: CompileOptions, tg, model, log, dump,
             adapt=None) -> Compiled:
    for p in make_passes(mask, example, params, opts, adapt, tg.abuf):
        log(p.name)
        g = p.apply(g)
        try:
            verify_graph(g)
        except ValueError as e:
            raise EdgecError(f"internal error after pass {p.name!r}: {e}") from None
        dump(p.name, g)
        if p.name == "mask":
            float_graph = copy.deepcopy(g)
    log("tile")
    nests = tile_graph(g, tg, opts.search)
    dump("tile", g, nests)
    c = emit_program(g, nests, tg, opts.lr, opts.seed, model, example, mask, log)
    c.float_graph = float_graph
    return c


def emit_program(g: Graph, nests: list[LoopNest], tg: Target, lr: float, seed: int,
                 model, example, mask, log) -> Compiled:
    """The back end after tiling: memory plan, instruction selection, container."""
    log("codegen")
    regs = exponent_registers(g) if is_dynamic(g) else None
    mem = plan_memory(g, seed, tg, regs)
    em = generate(g, nests, mem, tg, regs)
    prog = Program(tg.fingerprint, em.code, bytes(mem.data), mem.size,
                   [s.to_json() for s in mem.symbols.values()],
                   program_meta(g, mem, em, lr, model, tg))
    check_host_interface(g, mem, prog)
    return Compiled(g, nests, mem, em, prog, write_program(prog), tg, model, example, mask)


def check_host_interface(g: Graph, mem: MemoryPlan, prog: Program) -> None:
    """What `edgec run` will need of the program (isa/interface.py), checked before it is
    written: a problem is an error naming the layer and model line of the tensor at fault."""
    try:
        check_interface(prog)
    except InterfaceError as e:
        sym = mem.symbols.get(e.symbol) if e.symbol else None
        node = g.producer(sym.value) if sym is not None and sym.value in g.values else None
        if node is None:
            raise EdgecError(f"internal error: the program cannot run: {e}") from None
        where = f"{node.loc}: " if node.loc else ""
        hint = ""
        if sym.name == mem.of_value[g.outputs["logits"]].name:
            shp = list(g.values[g.outputs["logits"]].shape)
            hint = (f"; the logits {shp} are a view of it, but the host reads them from "
                    "the tensor as stored: make the model's last layer a Linear (flatten "
                    "first: torch.flatten(x, 1), then nn.Linear)")
        raise EdgecError(f"{where}layer {node.layer!r} ({node.op}): {e}{hint}") from None


def program_meta(g: Graph, mem: MemoryPlan, em: Emitter, lr: float, model,
                 tg: Target) -> dict:
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
            **({"target": name} if (name := recorded_name(tg)) else {}),
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
