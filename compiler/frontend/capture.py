"""Capture the joint forward+backward training graph and normalise it to edgec ops.

``make_fx`` traces ``torch.func.grad`` of the softmax cross-entropy (mean) loss of
``torch.func.functional_call(model, params, (x,))``.  Module hooks tag every forward aten
node with the module that was running (``node.meta["custom"]["edgec_module"]``) and
``record_stack_traces`` gives the model.py line.  Backward aten nodes carry neither; each
one is attributed through data flow: a backward op consumes ``dy``, the gradient of some
forward value ``y``, and inherits the layer and location of ``y``'s producer.

Each traced call_function node is converted by the handler of its aten op
(``aten/table.py``: one module per op family under ``aten/``, the shared capture context
in ``aten/context.py``); an op without a handler is reported as unsupported, naming the
op (or the torch.nn layer edgec lacks), the layer and the model.py line.

Value naming (deterministic):
  forward   ``<base>.out``     base = owning module name (``conv1``, ``features.3``) for
                               module ops; ``relu``, ``flatten``, ``<module>.relu`` ... for
                               functional calls; ``_1``, ``_2`` appended when a base repeats
  loss      ``loss.dz``        gradient of the logits (layer ``loss``)
  backward  ``<base>.dx``      gradient w.r.t. the input of the forward op ``base``
  grads     ``grad:<param>``   gradient of parameter ``<param>``
  params    ``param:<param>``; inputs ``x`` (f32) and ``labels`` (i32)
"""
from __future__ import annotations

import operator
import os
from typing import Any

import torch
import torch.fx.traceback as fx_traceback
from torch.fx.experimental.proxy_tensor import make_fx

from edgec.isa.errors import EdgecError
from edgec.compiler.ir.graph import Graph, Param
from edgec.compiler.frontend.aten.context import (META_KEY, OWNS, SUPPORTED, AtenCall,
                                                  CaptureCtx, Desc, aten_name, module_loc,
                                                  shape_of, source_loc)
from edgec.compiler.frontend.aten.table import HANDLERS, convert_getitem


def capture(model: torch.nn.Module, example_input: torch.Tensor, model_path: str) -> Graph:
    """Trace one training step of ``model`` and return the float edgec graph.

    The model is put in eval mode (BatchNorm uses its running statistics, Dropout is the
    identity)."""
    model.eval()
    model_file = os.path.abspath(model_path)
    base_name = os.path.basename(model_path)
    x = example_input.detach().to(torch.float32)
    # 1. a plain forward first: user errors get a model.py location, output is checked,
    #    and the leaf modules actually called are recorded (for trace failures)
    called, K = _checked_forward(model, x, model_file, base_name)
    # 2. trace
    params = {k: v.detach() for k, v in model.named_parameters()}
    gm = _trace_step(model, params, x, called, model_file, base_name)
    # 3. normalise
    ctx = _new_capture(model, x, model_file, base_name, K)
    pnames = list(params)
    env, output_node = _convert_nodes(ctx, gm, pnames)
    # 4. outputs
    _set_outputs(ctx, env, output_node, pnames)
    g = ctx.g
    g.remove_dead()
    try:
        g.verify()
    except ValueError as e:
        raise EdgecError(f"internal error: captured graph is malformed: {e}") from None
    return g


def _checked_forward(model, x, model_file: str, base_name: str) -> tuple[list[str], int]:
    """Run ``model(x)`` once; returns (the leaf modules called, in order; K)."""
    N = int(x.shape[0])
    called: list[str] = []
    names0 = {id(m): n for n, m in model.named_modules()}

    def record(m, args):
        if not any(True for _ in m.children()):
            called.append(names0.get(id(m), ""))

    hooks0 = [m.register_forward_pre_hook(record) for m in model.modules()]
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:  # noqa: BLE001
        err = _user_exc(e, model_file, base_name, "error in forward()")
        if str(err).startswith(f"{base_name}: ") and called:
            # the failing frame is not in model.py (nn.Sequential): blame the last module
            mods = dict(model.named_modules())
            tmp = CaptureCtx(Graph(), model_file, base_name, N, modules=mods)
            where = module_loc(tmp, called[-1])
            if where:
                err = EdgecError(f"{where}{str(err)[len(base_name):]} (in module "
                                 f"'{called[-1]}')")
        raise err from None
    finally:
        for h in hooks0:
            h.remove()
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != N \
            or not out.is_floating_point():
        got = (f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor)
               else type(out).__name__)
        raise EdgecError(f"{base_name}: the model must return logits of shape (N, K) = "
                         f"({N}, K) for example_input, got {got}")
    return called, int(out.shape[1])


def _trace_step(model, params, x, called: list[str], model_file: str, base_name: str):
    """make_fx of one training step (logits and parameter gradients of the mean
    cross-entropy), every forward aten node tagged with the module that was running."""
    N = int(x.shape[0])
    names = {id(m): n for n, m in model.named_modules()}
    stack: list[str] = []

    def _set():
        if stack:
            fx_traceback.current_meta["custom"] = {META_KEY: stack[-1]}
        else:
            fx_traceback.current_meta.pop("custom", None)

    def pre(m, args):
        stack.append(names.get(id(m), ""))
        _set()

    def post(m, args, o):
        if stack:
            stack.pop()
        _set()

    labels = torch.zeros(N, dtype=torch.long)

    def step(p, xx, ll):
        def loss_fn(pp):
            z = torch.func.functional_call(model, pp, (xx,))
            return torch.nn.functional.cross_entropy(z, ll), z
        grads, z = torch.func.grad(loss_fn, has_aux=True)(p)
        return z, grads

    hooks = []
    saved_custom = fx_traceback.current_meta.get("custom", None)
    had_custom = "custom" in fx_traceback.current_meta
    try:
        for m in model.modules():
            hooks.append(m.register_forward_pre_hook(pre))
            hooks.append(m.register_forward_hook(post, always_call=True))
        with fx_traceback.preserve_node_meta():
            # fake tensors: shapes only, no arithmetic (the buffers stay real constants)
            return make_fx(step, tracing_mode="fake", _allow_non_fake_inputs=True,
                           record_stack_traces=True)(params, x, labels)
    except EdgecError:
        raise
    except Exception as e:  # noqa: BLE001
        raise _trace_error(e, model, N, called, model_file, base_name) from None
    finally:
        for h in hooks:
            h.remove()
        if had_custom:
            fx_traceback.current_meta["custom"] = saved_custom
        else:
            fx_traceback.current_meta.pop("custom", None)


def _trace_error(e: Exception, model, N: int, called: list[str], model_file: str,
                 base_name: str) -> EdgecError:
    """A failed trace: the first torch.nn layer called that edgec lacks, else the error."""
    mods = dict(model.named_modules())
    for name in called:
        t = type(mods[name])
        if t not in OWNS and t.__module__.startswith("torch.nn"):
            tmp = CaptureCtx(Graph(), model_file, base_name, N, modules=mods)
            where = module_loc(tmp, name) or base_name
            return EdgecError(f"{where}: unsupported op '{t.__name__.lower()}' (layer "
                              f"'{name}', {t.__name__}); {SUPPORTED}")
    if _data_dependent(e):
        return EdgecError(
            f"data-dependent control flow at {_user_where(e, model_file, base_name)} is not "
            "supported: the step is compiled once for every batch, so forward() cannot "
            "branch on a tensor's values (if / while / bool() / .item() / .tolist() of a "
            "tensor); make the choice outside forward() (a constructor argument or a Python "
            "attribute, fixed when the model is compiled), or express it without a branch "
            "(e.g. relu / hardtanh for a clamp)")
    return _user_exc(e, model_file, base_name, "cannot trace the training step")


def _data_dependent(e: BaseException) -> bool:
    """Did tracing fail on Python control flow over a tensor's values?"""
    name = type(e).__name__
    text = str(e)
    return (name in ("GuardOnDataDependentSymNode", "DataDependentOutputException")
            or "data-dependent" in text or "unallocated storage" in text)


def _new_capture(model, x, model_file: str, base_name: str, K: int) -> CaptureCtx:
    """The capture context of an empty graph holding the inputs and the parameters."""
    N = int(x.shape[0])
    g = Graph()
    ctx = CaptureCtx(g, model_file, base_name, N,
                     module_types={n: type(m) for n, m in model.named_modules()},
                     modules=dict(model.named_modules()))
    ctx.bases.add("loss")           # reserved for loss.dz
    g.inputs = ["x", "labels"]
    g.add_value("x", tuple(x.shape))
    g.add_value("labels", (N,), dtype="i32")
    for pname, pt in model.named_parameters():
        mod, _, leaf = pname.rpartition(".")
        kind = "bias" if leaf == "bias" else "weight"
        g.params[pname] = Param(pname, f"param:{pname}", tuple(pt.shape), module=mod,
                                kind=kind, trainable=bool(pt.requires_grad))
        g.add_value(f"param:{pname}", tuple(pt.shape))
        ctx.param_module[f"param:{pname}"] = mod
    g.meta["num_classes"] = K
    g.meta["batch"] = N
    return ctx


def _convert_nodes(ctx: CaptureCtx, gm, pnames: list[str]):
    """Convert every fx node in order; returns (fx node -> Desc, the output node)."""
    env: dict[Any, Desc] = {}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(pnames) + 2:
        raise EdgecError("internal error: unexpected placeholders in the traced graph")
    for fxn, pname in zip(placeholders, pnames):
        env[fxn] = Desc("val", f"param:{pname}")
    env[placeholders[-2]] = Desc("val", "x")
    env[placeholders[-1]] = Desc("val", "labels")
    for fxn in gm.graph.nodes:
        if fxn.op == "placeholder":
            continue
        if fxn.op == "output":
            return env, fxn
        if fxn.op == "get_attr":        # a buffer (BatchNorm running statistics)
            env[fxn] = Desc("const")
            continue
        if fxn.op != "call_function":
            raise EdgecError(f"internal error: unexpected fx node {fxn.op}")
        env[fxn] = _convert(ctx, fxn, env)
    return env, None


def _set_outputs(ctx: CaptureCtx, env, output_node, pnames: list[str]) -> None:
    """The logits and ``grad:<param>`` outputs; parameters the loss does not reach are
    frozen (meta ``unused_params``)."""
    g, base_name = ctx.g, ctx.base_name
    flat = output_node.args[0]
    flat = list(flat) if isinstance(flat, (list, tuple)) else [flat]
    if len(flat) != 1 + len(pnames):
        raise EdgecError("internal error: unexpected outputs in the traced graph")
    zd = env[flat[0]]
    if zd.kind != "val" or zd.T:
        raise EdgecError("internal error: logits are not a plain value")
    g.outputs["logits"] = zd.name
    rename: dict[str, str] = {}
    for pname, o in zip(pnames, flat[1:]):
        d = env.get(o) if isinstance(o, torch.fx.Node) else None
        if d is not None and d.kind == "zero":
            # parameter not reached by the loss (module unused in forward): frozen
            g.params[pname].trainable = False
            g.meta.setdefault("unused_params", []).append(pname)
            continue
        if d is None or d.kind != "val" or d.name not in ctx.producer:
            raise EdgecError(f"internal error: no gradient value for parameter '{pname}'")
        if d.T:
            raise EdgecError(f"internal error: gradient of {pname} is transposed")
        if d.name in rename:
            raise EdgecError(f"{base_name}: parameter gradients of '{pname}' and "
                             f"'{rename[d.name][5:]}' coincide; shared weights are not supported")
        if shape_of(ctx, d.name) != shape_of(ctx, g.params[pname].value):
            raise EdgecError(f"internal error: gradient of {pname} has shape "
                             f"{shape_of(ctx, d.name)}, parameter {g.params[pname].shape}")
        rename[d.name] = f"grad:{pname}"
        g.outputs[f"grad:{pname}"] = f"grad:{pname}"
    g.meta.pop("_claimed", None)
    _rename(g, rename)


def _user_where(e: BaseException, model_file: str, base_name: str) -> str:
    """model.py:LINE of the innermost frame of the model file in e's traceback."""
    import traceback
    line = None
    for fs in traceback.extract_tb(e.__traceback__):
        try:
            if os.path.abspath(fs.filename) == model_file:
                line = fs.lineno
        except (TypeError, ValueError):
            pass
    return f"{base_name}:{line}" if line is not None else base_name


def _user_exc(e: BaseException, model_file: str, base_name: str, what: str) -> EdgecError:
    msg = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {msg[0]}" if msg else type(e).__name__
    return EdgecError(f"{_user_where(e, model_file, base_name)}: {what}: {text}")


def _rename(g: Graph, m: dict[str, str]) -> None:
    if not m:
        return
    new_values = {}
    for k, v in g.values.items():
        nk = m.get(k, k)
        v.name = nk
        new_values[nk] = v
    g.values = new_values
    for n in g.nodes:
        n.inputs = [m.get(i, i) for i in n.inputs]
        n.outputs = [m.get(o, o) for o in n.outputs]
    g.outputs = {k: m.get(v, v) for k, v in g.outputs.items()}


def float_values(g: Graph, model: torch.nn.Module,
                 teacher_bn: dict | None = None) -> dict[str, torch.Tensor]:
    """Float values of every graph parameter: the model's own (copies) and the frozen
    constants (const_values)."""
    out = {k: v.detach().clone() for k, v in model.named_parameters()}
    out.update(const_values(g, model, teacher_bn))
    return out


def const_values(g: Graph, model: torch.nn.Module,
                 teacher_bn: dict | None = None) -> dict[str, torch.Tensor]:
    """Float values of the graph's frozen constants (docs/numerics.md, lowerings).  A
    teacher's own BatchNorm constants (``teacher:<bn>:scale`` ..., compiler/passes/teacher.py)
    take their statistics from `teacher_bn` ({module: (running_mean, running_var)}) where
    given, else from the model's BatchNorm, like the student's."""
    out = {}
    for p in g.params.values():
        if p.kind == "avg":
            kh, kw = p.shape[2:]
            out[p.name] = torch.full(p.shape, 1.0 / (kh * kw), dtype=torch.float64)
        elif p.kind in ("bn_scale", "bn_shift", "bn_mean"):
            mean, var, eps = _bn_statistics(model, p, teacher_bn or {})
            inv = 1.0 / torch.sqrt(var + eps)
            v = inv if p.kind == "bn_scale" else (
                -mean * inv if p.kind == "bn_shift" else -mean)
            out[p.name] = v.reshape(p.shape)
        elif p.kind in ("teacher", "teacher_bias"):       # the pretrained value
            src = dict(model.named_parameters())[p.name.split(":", 1)[1]]
            out[p.name] = src.detach().clone().reshape(p.shape)
    return out


def _bn_statistics(model: torch.nn.Module, p, teacher_bn: dict):
    """(running_mean, running_var, eps) in float64 for a BatchNorm constant `p`."""
    own = p.name.startswith("teacher:")
    mod = p.module[len("teacher."):] if own else p.module
    bn = model.get_submodule(mod)
    mean, var = (teacher_bn[mod] if own and mod in teacher_bn
                 else (bn.running_mean, bn.running_var))
    return (torch.as_tensor(mean).double(), torch.as_tensor(var).double(), float(bn.eps))


def _convert(ctx: CaptureCtx, fxn, env) -> Desc:
    """Convert one call_function node with the handler of its aten op (aten/table.py)."""
    op = aten_name(fxn.target)
    call = AtenCall(ctx, fxn, env, op, source_loc(ctx, fxn))
    handler = convert_getitem if fxn.target is operator.getitem else HANDLERS.get(op)
    if handler is None:
        raise call.unsupported()
    return handler(call)
