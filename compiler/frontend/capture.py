"""Capture the joint forward+backward training graph and normalise it to edgec ops.

``make_fx`` traces ``torch.func.grad`` of the softmax cross-entropy (mean) loss of
``torch.func.functional_call(model, params, (x,))``.  Module hooks tag every forward aten
node with the module that was running (``node.meta["custom"]["edgec_module"]``) and
``record_stack_traces`` gives the model.py line.  Backward aten nodes carry neither; each
one is attributed through data flow: a backward op consumes ``dy``, the gradient of some
forward value ``y``, and inherits the layer and location of ``y``'s producer.

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

import os
import re
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx.traceback as fx_traceback
from torch.fx.experimental.proxy_tensor import make_fx

from edgec.isa.errors import EdgecError
from edgec.compiler.ir.graph import Graph, Node, Param
from edgec.compiler.frontend.load import construction_site

SUPPORTED = ("edgec supports Conv2d (incl. grouped/depthwise), Linear, BatchNorm2d, ReLU, "
             "ReLU6/Hardtanh, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, residual add, "
             "Dropout/Identity, flatten")
_META_KEY = "edgec_module"

# leaf module type -> the edgec op it owns (its name becomes the value base)
_OWNS = {
    torch.nn.Conv2d: "conv",
    torch.nn.Linear: "linear",
    torch.nn.ReLU: "relu",
    torch.nn.MaxPool2d: "maxpool",
    torch.nn.Flatten: "reshape",
    torch.nn.ReLU6: "hardtanh",
    torch.nn.Hardtanh: "hardtanh",
    torch.nn.AvgPool2d: "conv",
    torch.nn.AdaptiveAvgPool2d: "conv",
    torch.nn.BatchNorm2d: "bn",
}

# aten ops that only allocate/copy: in an error, the module type names the op better
_PLUMBING = {"empty", "empty_like", "zeros", "zeros_like", "ones", "full", "bernoulli_",
             "bernoulli", "copy_", "fill_", "new_empty", "rand", "rand_like", "_to_copy",
             "expand", "unsqueeze", "squeeze", "mul", "div"}

# aten ops that are the identity on values
_NOOPS = {"detach", "alias", "clone", "contiguous", "lift_fresh_copy", "_to_copy",
          "lift_fresh", "view_as", "expand_as"}


@dataclass
class _D:
    """Descriptor of an fx node's value in edgec terms."""
    kind: str                    # val | tuple | indices | loss | logsoftmax | nllgrad | none
    name: str | None = None      # edgec value (kind val)
    T: bool = False              # 2-D transpose of ``name``
    data: Any = None


@dataclass
class _Info:
    layer: str | None
    loc: str | None
    base: str | None
    grad_of: str | None = None   # forward value this backward value is the gradient of


@dataclass
class _Ctx:
    g: Graph
    model_file: str              # absolute path
    base_name: str               # basename for locs
    n: int
    info: dict[str, _Info] = field(default_factory=dict)
    producer: dict[str, Node] = field(default_factory=dict)
    bases: set[str] = field(default_factory=set)
    param_module: dict[str, str] = field(default_factory=dict)   # param value -> module
    module_types: dict[str, type] = field(default_factory=dict)
    modules: dict[str, torch.nn.Module] = field(default_factory=dict)
    bn: dict[str, dict] = field(default_factory=dict)      # BatchNorm input -> its record


def _err(loc: str | None, msg: str) -> EdgecError:
    return EdgecError(f"{loc}: {msg}" if loc else msg)


def _aten_name(target) -> str:
    s = str(target)
    if s.startswith("aten."):
        return s.split(".")[1]
    return getattr(target, "__name__", s)


def _loc_of(ctx: _Ctx, fxn) -> str | None:
    """model.py:LINE of the innermost model.py frame that produced ``fxn``; for modules
    whose forward() is not in model.py (nn.Sequential children), the line that
    constructed the module."""
    st = fxn.meta.get("stack_trace") or ""
    line = None
    for m in re.finditer(r'File "([^"]+)", line (\d+)', st):
        try:
            same = os.path.abspath(m.group(1)) == ctx.model_file
        except (TypeError, ValueError):
            same = False
        if same:
            line = int(m.group(2))      # keep the innermost (last) frame in model.py
    if line is None:
        return _module_loc(ctx, _module_of(fxn))
    return f"{ctx.base_name}:{line}"


def _module_loc(ctx: _Ctx, mod: str | None) -> str | None:
    while mod is not None:
        m = ctx.modules.get(mod)
        site = construction_site(m) if m is not None else None
        if site is not None and site[0] == ctx.model_file:
            return f"{ctx.base_name}:{site[1]}"
        if not mod:
            break
        mod = mod.rpartition(".")[0]
    return None


def _module_of(fxn) -> str | None:
    c = fxn.meta.get("custom") or {}
    return c.get(_META_KEY)


def _fwd_layer_base(ctx: _Ctx, fxn, op: str, default_base: str) -> tuple[str, str]:
    mod = _module_of(fxn)
    if mod is None:
        mod = ""
    layer = mod if mod else "forward"
    mtype = ctx.module_types.get(mod)
    if mod and mtype is not None and _OWNS.get(mtype) == op:
        base = mod
    else:
        base = f"{mod}.{default_base}" if mod else default_base
    b, i = base, 1
    while b in ctx.bases:
        b = f"{base}_{i}"
        i += 1
    ctx.bases.add(b)
    return layer, b


def _pair(v, n=2) -> tuple[int, ...]:
    if isinstance(v, (list, tuple)):
        v = [int(a) for a in v]
        if len(v) == 1:
            v = v * n
        return tuple(v)
    return (int(v),) * n


def _shape(ctx: _Ctx, name: str) -> tuple[int, ...]:
    return ctx.g.values[name].shape


def _emit(ctx: _Ctx, op, inputs, out, shape, attrs, info: _Info) -> str:
    ctx.g.add_value(out, shape)
    node = ctx.g.add_node(op, inputs, [out], attrs, layer=info.layer, loc=info.loc)
    ctx.producer[out] = node
    ctx.info[out] = info
    return out


def _fwd_of(ctx: _Ctx, dy: str, what: str) -> tuple[Node, _Info]:
    """The forward node whose output ``dy`` is the gradient of."""
    inf = ctx.info.get(dy)
    y = inf.grad_of if inf else None
    node = ctx.producer.get(y) if y else None
    if node is None:
        raise EdgecError(f"internal error: cannot attribute backward op {what} "
                         f"(operand {dy!r} is not a known gradient)")
    return node, ctx.info[y]


def _fwd_by(ctx: _Ctx, what: str, pred) -> tuple[Node, _Info]:
    """The (last) forward node satisfying ``pred``: backward aten ops are matched to their
    forward op through the forward operands they take (weights, inputs, outputs)."""
    for node in reversed(ctx.g.nodes):
        if pred(node) and ctx.info.get(node.outputs[0]) is not None \
                and ctx.info[node.outputs[0]].grad_of is None:
            return node, ctx.info[node.outputs[0]]
    raise EdgecError(f"internal error: cannot attribute backward op {what}")


def _arg(fxn, i: int, name: str, default):
    if len(fxn.args) > i:
        return fxn.args[i]
    return fxn.kwargs.get(name, default)


def capture(model: torch.nn.Module, example_input: torch.Tensor, model_path: str) -> Graph:
    """Trace one training step of ``model`` and return the float edgec graph.

    The model is put in eval mode (BatchNorm uses its running statistics, Dropout is the
    identity)."""
    model.eval()
    model_file = os.path.abspath(model_path)
    base_name = os.path.basename(model_path)
    x = example_input.detach().to(torch.float32)
    N = int(x.shape[0])

    # 1. a plain forward first: user errors get a model.py location, output is checked,
    #    and the leaf modules actually called are recorded (for trace failures)
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
            tmp = _Ctx(Graph(), model_file, base_name, N, modules=mods)
            where = _module_loc(tmp, called[-1])
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
    K = int(out.shape[1])

    # 2. trace
    names = {id(m): n for n, m in model.named_modules()}
    module_types = {n: type(m) for n, m in model.named_modules()}
    stack: list[str] = []

    def _set():
        if stack:
            fx_traceback.current_meta["custom"] = {_META_KEY: stack[-1]}
        else:
            fx_traceback.current_meta.pop("custom", None)

    def pre(m, args):
        stack.append(names.get(id(m), ""))
        _set()

    def post(m, args, o):
        if stack:
            stack.pop()
        _set()

    params = {k: v.detach() for k, v in model.named_parameters()}
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
            gm = make_fx(step, tracing_mode="fake", _allow_non_fake_inputs=True,
                         record_stack_traces=True)(params, x, labels)
    except EdgecError:
        raise
    except Exception as e:  # noqa: BLE001
        mods = dict(model.named_modules())
        for name in called:
            t = type(mods[name])
            if t not in _OWNS and t.__module__.startswith("torch.nn"):
                tmp = _Ctx(Graph(), model_file, base_name, N, modules=mods)
                where = _module_loc(tmp, name) or base_name
                raise EdgecError(f"{where}: unsupported op '{t.__name__.lower()}' (layer "
                                 f"'{name}', {t.__name__}); {SUPPORTED}") from None
        raise _user_exc(e, model_file, base_name, "cannot trace the training step") from None
    finally:
        for h in hooks:
            h.remove()
        if had_custom:
            fx_traceback.current_meta["custom"] = saved_custom
        else:
            fx_traceback.current_meta.pop("custom", None)

    # 3. normalise
    g = Graph()
    ctx = _Ctx(g, model_file, base_name, N, module_types=module_types,
               modules=dict(model.named_modules()))
    ctx.bases.add("loss")           # reserved for loss.dz
    g.inputs = ["x", "labels"]
    g.add_value("x", tuple(x.shape))
    g.add_value("labels", (N,), dtype="i32")
    pnames = list(params)
    for pname, pt in model.named_parameters():
        mod, _, leaf = pname.rpartition(".")
        kind = "bias" if leaf == "bias" else "weight"
        g.params[pname] = Param(pname, f"param:{pname}", tuple(pt.shape), module=mod,
                                kind=kind, trainable=bool(pt.requires_grad))
        g.add_value(f"param:{pname}", tuple(pt.shape))
        ctx.param_module[f"param:{pname}"] = mod
    g.meta["num_classes"] = K
    g.meta["batch"] = N

    env: dict[Any, _D] = {}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(pnames) + 2:
        raise EdgecError("internal error: unexpected placeholders in the traced graph")
    for fxn, pname in zip(placeholders, pnames):
        env[fxn] = _D("val", f"param:{pname}")
    env[placeholders[-2]] = _D("val", "x")
    env[placeholders[-1]] = _D("val", "labels")

    output_node = None
    for fxn in gm.graph.nodes:
        if fxn.op == "placeholder":
            continue
        if fxn.op == "output":
            output_node = fxn
            break
        if fxn.op == "get_attr":        # a buffer (BatchNorm running statistics)
            env[fxn] = _D("const")
            continue
        if fxn.op != "call_function":
            raise EdgecError(f"internal error: unexpected fx node {fxn.op}")
        env[fxn] = _convert(ctx, fxn, env)

    # 4. outputs
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
        if _shape(ctx, d.name) != _shape(ctx, g.params[pname].value):
            raise EdgecError(f"internal error: gradient of {pname} has shape "
                             f"{_shape(ctx, d.name)}, parameter {g.params[pname].shape}")
        rename[d.name] = f"grad:{pname}"
        g.outputs[f"grad:{pname}"] = f"grad:{pname}"
    g.meta.pop("_claimed", None)
    _rename(g, rename)
    g.remove_dead()
    try:
        g.verify()
    except ValueError as e:
        raise EdgecError(f"internal error: captured graph is malformed: {e}") from None
    return g


def _user_exc(e: BaseException, model_file: str, base_name: str, what: str) -> EdgecError:
    import traceback
    line = None
    for fs in traceback.extract_tb(e.__traceback__):
        try:
            if os.path.abspath(fs.filename) == model_file:
                line = fs.lineno
        except (TypeError, ValueError):
            pass
    msg = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {msg[0]}" if msg else type(e).__name__
    where = f"{base_name}:{line}" if line is not None else base_name
    return EdgecError(f"{where}: {what}: {text}")


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


def _const_param(ctx: _Ctx, name: str, kind: str, module: str, shape) -> str:
    """A frozen constant (BatchNorm normalisation, average-pool weight) as a parameter;
    its float value is derived from the model by ``const_values``."""
    if name in ctx.g.params:
        raise EdgecError(f"{ctx.base_name}: module '{module}' is called more than once; "
                         "shared modules are not supported")
    ctx.g.params[name] = Param(name, f"param:{name}", tuple(shape), module=module, kind=kind,
                               trainable=False)
    ctx.g.add_value(f"param:{name}", tuple(shape))
    return f"param:{name}"


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


def _claim_params(ctx: _Ctx, values: list[str], loc: str | None) -> None:
    used = ctx.g.meta.setdefault("_claimed", {})
    for v in values:
        if v in used:
            raise EdgecError(f"{loc or ctx.base_name}: parameter '{v[len('param:'):]}' is used "
                             f"by more than one op (first at {used[v]}); shared weights "
                             f"(a module called twice) are not supported")
        used[v] = loc or "?"


def _val(env, a, what="operand") -> _D:
    d = env.get(a) if isinstance(a, torch.fx.Node) else None
    if d is None:
        raise EdgecError(f"internal error: {what} {a!r} has no edgec value")
    return d


def _convert(ctx: _Ctx, fxn, env) -> _D:
    g = ctx.g
    op = _aten_name(fxn.target)
    loc = _loc_of(ctx, fxn)
    args = fxn.args

    def unsupported(name=None, detail=""):
        mod = _module_of(fxn)
        layer = mod if mod else "forward"
        mt = ctx.module_types.get(mod) if mod else None
        extra = f", {mt.__name__}" if mt is not None and mod else ""
        where = loc or ctx.base_name
        shown = name or op
        if mt is not None and mt not in _OWNS and mt.__module__.startswith("torch.nn") \
                and not any(True for _ in ctx.modules[mod].children()):
            shown, detail = mt.__name__.lower(), ""    # a torch.nn layer edgec lacks
        elif name is None and mt is not None and op in _PLUMBING:
            shown = mt.__name__.lower()
        return EdgecError(f"{where}: unsupported op '{shown}' (layer '{layer}'{extra})"
                          f"{detail}; {SUPPORTED}")

    # ---- getitem on tuples ----
    if fxn.target is __import__("operator").getitem:
        src = _val(env, args[0])
        idx = args[1]
        if src.kind == "tuple":
            return src.data(idx)
        if src.kind == "loss":
            return src
        raise EdgecError("internal error: getitem on a non-tuple")

    # ---- zero gradients of parameters that do not reach the loss ----
    if op == "zeros_like" and fxn.args and isinstance(fxn.args[0], torch.fx.Node) \
            and env.get(fxn.args[0]) is not None \
            and env[fxn.args[0]].name in ctx.param_module and not fxn.users.keys() - {
                u for u in fxn.users if u.op == "output"}:
        return _D("zero", env[fxn.args[0]].name)

    # ---- no-ops ----
    if op in ("empty", "empty_like") and not fxn.users:   # scratch of batch_norm, unused
        return _D("none")
    if op in _NOOPS:
        d = _val(env, args[0])
        if op == "_to_copy" and fxn.kwargs.get("dtype") not in (None, torch.float32):
            raise unsupported("to")
        return d
    if op in ("t", "transpose", "permute", "numpy_T"):
        d = _val(env, args[0])
        if d.kind != "val" or len(_shape(ctx, d.name)) != 2:
            raise unsupported()
        if op == "transpose" and sorted(int(a) % 2 for a in args[1:3]) != [0, 1]:
            raise unsupported()
        if op == "permute" and [int(a) % 2 for a in args[1]] != [1, 0]:
            raise unsupported()
        return _D("val", d.name, not d.T)

    # ---- loss chain (inserted by capture, not by the user) ----
    if op == "_log_softmax":
        z = _val(env, args[0])
        return _D("logsoftmax", z.name)
    if op == "nll_loss_forward":
        return _D("loss")
    if op == "ones_like" and _val(env, args[0]).kind == "loss":
        return _D("loss")
    if op == "nll_loss_backward":
        ls = _val(env, args[1])
        if ls.kind != "logsoftmax":
            raise EdgecError("internal error: unexpected loss structure")
        reduction = int(args[4]) if len(args) > 4 else 1
        if reduction != 1 or args[3] is not None:
            raise EdgecError("internal error: the loss must be mean cross-entropy")
        return _D("nllgrad", ls.name)
    if op == "_log_softmax_backward_data":
        d = _val(env, args[0])
        if d.kind != "nllgrad":
            raise EdgecError("internal error: unexpected loss structure")
        z = d.name
        zp = ctx.producer.get(z)
        info = _Info("loss", zp.loc if zp else None, "loss", grad_of=z)
        return _D("val", _emit(ctx, "loss_grad", [z, "labels"], "loss.dz", _shape(ctx, z),
                               {}, info))

    # ---- forward ops ----
    if op == "convolution":
        xd, wd = _val(env, args[0]), _val(env, args[1])
        bd = _val(env, args[2]) if args[2] is not None else None
        stride, pad, dil, transposed, outpad, groups = args[3:9]
        detail = []
        if transposed:
            detail.append("transposed convolution")
        if any(int(d) != 1 for d in dil):
            detail.append(f"dilation={tuple(dil)}")
        if len(stride) != 2 or xd.kind != "val" or len(_shape(ctx, xd.name)) != 4:
            detail.append("only 2-D convolutions on (N, C, H, W)")
        if detail:
            raise unsupported("conv", " with " + ", ".join(detail))
        if wd.name not in ctx.param_module or (bd is not None and bd.name not in ctx.param_module):
            raise unsupported("conv", " with non-parameter weights")
        _claim_params(ctx, [wd.name] + ([bd.name] if bd is not None else []), loc)
        layer, base = _fwd_layer_base(ctx, fxn, "conv", "conv")
        ins = [xd.name, wd.name] + ([bd.name] if bd is not None else [])
        shape = tuple(fxn.meta["val"].shape)
        info = _Info(layer, loc, base)
        attrs = {"stride": _pair(stride), "pad": _pair(pad)}
        if int(groups) != 1:
            attrs["groups"] = int(groups)
        out = _emit(ctx, "conv", ins, f"{base}.out", shape, attrs, info)
        return _D("val", out)

    if op in ("relu", "relu_"):
        xd = _val(env, args[0])
        if xd.kind != "val" or xd.T:
            raise unsupported("relu")
        layer, base = _fwd_layer_base(ctx, fxn, "relu", "relu")
        out = _emit(ctx, "relu", [xd.name], f"{base}.out", _shape(ctx, xd.name), {},
                    _Info(layer, loc, base))
        if op == "relu_":
            env[args[0]] = _D("val", out)      # the input tensor was overwritten
        return _D("val", out)

    if op == "max_pool2d_with_indices":
        xd = _val(env, args[0])
        kernel = _pair(_arg(fxn, 1, "kernel_size", None))
        stride = _arg(fxn, 2, "stride", [])
        stride = _pair(stride) if stride not in ([], (), None) else kernel
        pad = _pair(_arg(fxn, 3, "padding", 0))
        dil = _pair(_arg(fxn, 4, "dilation", 1))
        ceil = bool(_arg(fxn, 5, "ceil_mode", False))
        detail = []
        if dil != (1, 1):
            detail.append(f"dilation={dil}")
        if ceil:
            detail.append("ceil_mode=True")
        if xd.kind != "val" or len(_shape(ctx, xd.name)) != 4:
            detail.append("input that is not (N, C, H, W)")
        if detail:
            raise unsupported("maxpool", " with " + ", ".join(detail))
        layer, base = _fwd_layer_base(ctx, fxn, "maxpool", "maxpool")
        shape = tuple(fxn.meta["val"][0].shape)
        attrs = {"kernel": kernel, "stride": stride, "pad": pad}
        out = _emit(ctx, "maxpool", [xd.name], f"{base}.out", shape, attrs,
                    _Info(layer, loc, base))

        def pick(i, out=out):
            return _D("val", out) if i == 0 else _D("indices", out)
        return _D("tuple", data=pick)

    def is_grad(d: _D) -> bool:
        i = ctx.info.get(d.name) if d.kind == "val" else None
        return i is not None and i.grad_of is not None

    if op == "addmm" or (op == "mm" and not is_grad(_val(env, args[0]))
                         and not is_grad(_val(env, args[1]))):
        if op == "addmm":
            bd, xd, wd = (_val(env, a) for a in args[:3])
            if fxn.kwargs.get("beta", 1) != 1 or fxn.kwargs.get("alpha", 1) != 1:
                raise unsupported("addmm")
        else:
            bd = None
            xd, wd = _val(env, args[0]), _val(env, args[1])
        ok = (xd.kind == "val" and not xd.T and wd.kind == "val" and wd.T
              and wd.name in ctx.param_module
              and (bd is None or (bd.kind == "val" and bd.name in ctx.param_module)))
        if not ok:
            raise unsupported("matmul", " (only nn.Linear / F.linear with parameters)")
        _claim_params(ctx, [wd.name] + ([bd.name] if bd is not None else []), loc)
        layer, base = _fwd_layer_base(ctx, fxn, "linear", "linear")
        ins = [xd.name, wd.name] + ([bd.name] if bd is not None else [])
        shape = tuple(fxn.meta["val"].shape)
        out = _emit(ctx, "linear", ins, f"{base}.out", shape, {}, _Info(layer, loc, base))
        return _D("val", out)

    if op in ("view", "reshape", "_unsafe_view", "flatten"):
        xd = _val(env, args[0])
        if xd.kind != "val" or xd.T:
            raise unsupported()
        tgt = tuple(int(s) for s in fxn.meta["val"].shape)
        src = _shape(ctx, xd.name)
        if tgt == src:
            return xd
        inf = ctx.info.get(xd.name)
        if inf is not None and inf.grad_of is not None:
            # backward of a forward reshape: dy viewed back to the reshape's input shape
            fnode, finf = _fwd_of(ctx, xd.name, op)
            if fnode.op != "reshape" or _shape(ctx, fnode.inputs[0]) != tgt:
                raise EdgecError(f"internal error: unexpected backward view {src}->{tgt}")
            info = _Info(finf.layer, finf.loc, finf.base, grad_of=fnode.inputs[0])
            out = _emit(ctx, "reshape", [xd.name], f"{finf.base}.dx", tgt,
                        {"shape": tgt}, info)
            return _D("val", out)
        if len(tgt) != 2 or tgt[0] != ctx.n or len(src) < 2 or src[0] != ctx.n:
            raise unsupported(op, f" from {src} to {tgt} (only flatten to (N, features))")
        layer, base = _fwd_layer_base(ctx, fxn, "reshape", "flatten")
        out = _emit(ctx, "reshape", [xd.name], f"{base}.out", tgt, {"shape": tgt},
                    _Info(layer, loc, base))
        return _D("val", out)

    # ---- BatchNorm (eval): two depthwise 1x1 convs, see docs/numerics.md ----
    if op in ("native_batch_norm", "_native_batch_norm_legit_no_training"):
        if op == "native_batch_norm":
            xa, wa, ba, training = args[0], args[1], args[2], bool(args[5])
        else:
            xa, wa, ba, training = args[0], args[1], args[2], False
        mod = _module_of(fxn)
        if training or not isinstance(ctx.modules.get(mod), torch.nn.BatchNorm2d):
            raise unsupported("batch_norm", " (only nn.BatchNorm2d modules with running "
                                            "statistics)")
        xd = _val(env, xa)
        xs = _shape(ctx, xd.name)
        if xd.kind != "val" or len(xs) != 4:
            raise unsupported("batch_norm", " on input that is not (N, C, H, W)")
        C = xs[1]
        layer, base = _fwd_layer_base(ctx, fxn, "bn", "bn")
        info = _Info(layer, loc, base)
        one = {"stride": (1, 1), "pad": (0, 0), "groups": C}
        scale = _const_param(ctx, f"{mod}:scale", "bn_scale", mod, (C, 1, 1, 1))
        prod = ctx.producer.get(xd.name)
        if prod is not None and prod.op == "conv" and len(prod.inputs) == 2 and all(
                _aten_name(u.target) in ("native_batch_norm", "native_batch_norm_backward")
                for u in xa.users):
            # the conv feeding only this BN takes -mean as a frozen bias, so its int8 output
            # is centred (no precision spent on the mean); the BN then only scales
            prod.inputs.append(_const_param(ctx, f"{mod}:mean", "bn_mean", mod, (C,)))
            norm = [xd.name, scale]
        else:
            norm = [xd.name, scale, _const_param(ctx, f"{mod}:shift", "bn_shift", mod, (C,))]
        out = xhat = _emit(ctx, "conv", norm, f"{base}.xhat", xs, one, info)
        gamma = beta = None
        if wa is not None:
            gamma = _val(env, wa).name
            beta = _val(env, ba).name if ba is not None else None
            ps = [gamma] + ([beta] if beta else [])
            if any(p not in ctx.param_module for p in ps):
                raise unsupported("batch_norm", " with non-parameter weight/bias")
            _claim_params(ctx, ps, loc)
            ctx.g.values[gamma].shape = (C, 1, 1, 1)
            out = _emit(ctx, "conv", [xhat] + ps, f"{base}.out", xs, one, info)
        rec = dict(x=xd.name, xhat=xhat, scale=scale, gamma=gamma, beta=beta, info=info,
                   out=out)
        ctx.bn[xd.name] = rec
        return _D("tuple", data=lambda i: _D("val", out) if i == 0 else _D("none"))

    if op == "native_batch_norm_backward":
        dy, xd = _val(env, args[0]), _val(env, args[1])
        rec = ctx.bn.get(xd.name)
        if rec is None:
            raise EdgecError("internal error: unexpected batch_norm backward")
        binf = rec["info"]
        xs = _shape(ctx, xd.name)
        one = {"stride": (1, 1), "pad": (0, 0), "groups": xs[1]}
        made: dict[int, _D] = {}

        def pick_bn(i):
            if i in made:
                return made[i]
            if i == 0:
                d = dy.name
                if rec["gamma"] is not None:
                    d = _emit(ctx, "conv_eb", [d, rec["gamma"]], f"{binf.base}.dxhat", xs,
                              {**one, "in_shape": xs}, _Info(binf.layer, binf.loc, binf.base,
                                                             grad_of=rec["xhat"]))
                d = _emit(ctx, "conv_eb", [d, rec["scale"]], f"{binf.base}.dx", xs,
                          {**one, "in_shape": xs},
                          _Info(binf.layer, binf.loc, binf.base, grad_of=xd.name))
            elif i == 1 and rec["gamma"] is not None:
                d = _emit(ctx, "conv_wg", [dy.name, rec["xhat"]], g.fresh(f"{binf.base}.dw"),
                          (xs[1], 1, 1, 1), {**one, "kernel": (1, 1)},
                          _Info(binf.layer, binf.loc, binf.base, grad_of=rec["gamma"]))
            elif i == 2 and rec["beta"] is not None:
                d = _emit(ctx, "bias_grad", [dy.name], g.fresh(f"{binf.base}.db"), (xs[1],),
                          {}, _Info(binf.layer, binf.loc, binf.base, grad_of=rec["beta"]))
            else:
                return _D("none")
            made[i] = _D("val", d)
            return made[i]
        return _D("tuple", data=pick_bn)

    # ---- ReLU6 / Hardtanh ----
    if op in ("hardtanh", "hardtanh_"):
        xd = _val(env, args[0])
        if xd.kind != "val" or xd.T:
            raise unsupported("hardtanh")
        lo = float(_arg(fxn, 1, "min_val", -1.0))
        hi = float(_arg(fxn, 2, "max_val", 1.0))
        layer, base = _fwd_layer_base(ctx, fxn, "hardtanh", "hardtanh")
        out = _emit(ctx, "hardtanh", [xd.name], f"{base}.out", _shape(ctx, xd.name),
                    {"lo": lo, "hi": hi}, _Info(layer, loc, base))
        if op == "hardtanh_":
            env[args[0]] = _D("val", out)
        return _D("val", out)

    if op == "hardtanh_backward":
        dy, xd = _val(env, args[0]), _val(env, args[1])
        fnode, finf = _fwd_by(ctx, op, lambda n: n.op == "hardtanh"
                              and xd.name in (n.inputs[0], n.outputs[0]))
        info = _Info(finf.layer, finf.loc, finf.base, grad_of=fnode.inputs[0])
        out = _emit(ctx, "hardtanh_bwd", [dy.name, fnode.outputs[0]], f"{finf.base}.dx",
                    _shape(ctx, fnode.inputs[0]), dict(fnode.attrs), info)
        return _D("val", out)

    # ---- residual add (forward) and sums of errors (backward) ----
    if op in ("add", "add_"):
        ok = (len(args) == 2 and all(isinstance(a, torch.fx.Node) for a in args)
              and fxn.kwargs.get("alpha", 1) == 1)
        if not ok:
            raise unsupported("add", " (only tensor + tensor of the same shape)")
        a, b = _val(env, args[0]), _val(env, args[1])
        if a.kind != "val" or b.kind != "val" or a.T or b.T \
                or _shape(ctx, a.name) != _shape(ctx, b.name):
            raise unsupported("add", " (only tensor + tensor of the same shape)")
        if is_grad(a) and is_grad(b):
            # partial errors of one forward value: take the earliest-produced one
            order = {n.outputs[0]: i for i, n in enumerate(ctx.g.nodes)}
            fv = min((ctx.info[a.name].grad_of, ctx.info[b.name].grad_of),
                     key=lambda v: order.get(v, -1))
            finf = ctx.info.get(fv)
            fbase = finf.base if finf is not None else fv
            info = _Info(finf.layer if finf else "forward", finf.loc if finf else loc, fbase,
                         grad_of=fv)
            out = _emit(ctx, "add", [a.name, b.name], g.fresh(f"{fbase}.dsum"),
                        _shape(ctx, a.name), {"grad": True}, info)
        elif not is_grad(a) and not is_grad(b):
            layer, base = _fwd_layer_base(ctx, fxn, "add", "add")
            out = _emit(ctx, "add", [a.name, b.name], f"{base}.out", _shape(ctx, a.name),
                        {"grad": False}, _Info(layer, loc, base))
        else:
            raise unsupported("add", " (mixing a forward value and an error)")
        if op == "add_":
            env[args[0]] = _D("val", out)
        return _D("val", out)

    # ---- average pooling: depthwise convs with a constant weight ----
    if op in ("avg_pool2d", "mean", "_adaptive_avg_pool2d"):
        xd = _val(env, args[0])
        xs = _shape(ctx, xd.name) if xd.kind == "val" else ()
        if len(xs) != 4 or xd.T:
            raise unsupported(op, " on input that is not (N, C, H, W)")
        N, C, H, W = xs
        keep4 = True
        if op == "avg_pool2d":
            kernel = _pair(_arg(fxn, 1, "kernel_size", None))
            stride = _arg(fxn, 2, "stride", [])
            stride = _pair(stride) if stride not in ([], (), None) else kernel
            pad = _pair(_arg(fxn, 3, "padding", 0))
            detail = []
            if bool(_arg(fxn, 4, "ceil_mode", False)):
                detail.append("ceil_mode=True")
            if not bool(_arg(fxn, 5, "count_include_pad", True)) and pad != (0, 0):
                detail.append("count_include_pad=False")
            if _arg(fxn, 6, "divisor_override", None) is not None:
                detail.append("divisor_override")
            if detail:
                raise unsupported("avgpool", " with " + ", ".join(detail))
        elif op == "mean":
            dims = sorted(int(d) % 4 for d in _arg(fxn, 1, "dim", []))
            if dims != [2, 3] or fxn.kwargs.get("dtype") not in (None, torch.float32):
                raise unsupported("mean", " (only the mean over H and W of (N, C, H, W))")
            kernel = stride = (H, W)
            pad = (0, 0)
            keep4 = bool(_arg(fxn, 2, "keepdim", False))
        else:
            oh, ow = _pair(args[1])
            if H % oh or W % ow:
                raise unsupported("adaptive_avg_pool2d", f" from {H}x{W} to {oh}x{ow} "
                                  "(the input size must be a multiple of the output size)")
            kernel = stride = (H // oh, W // ow)
            pad = (0, 0)
        layer, base = _fwd_layer_base(ctx, fxn, "conv", "avgpool")
        wv = _const_param(ctx, f"{base}:avg", "avg", layer, (C, 1, *kernel))
        info = _Info(layer, loc, base)
        oshape = (N, C, (H + 2 * pad[0] - kernel[0]) // stride[0] + 1,
                  (W + 2 * pad[1] - kernel[1]) // stride[1] + 1)
        out = _emit(ctx, "conv", [xd.name, wv], f"{base}.out" if keep4 else f"{base}.pool",
                    oshape, {"stride": stride, "pad": pad, "groups": C}, info)
        if not keep4:
            out = _emit(ctx, "reshape", [out], f"{base}.out", (N, C), {"shape": (N, C)}, info)
        return _D("val", out)

    def avg_eb(dy: _D, fnode: Node, finf: _Info) -> _D:
        xs = _shape(ctx, fnode.inputs[0])
        info = _Info(finf.layer, finf.loc, finf.base, grad_of=fnode.inputs[0])
        at = {k: fnode.attrs[k] for k in ("stride", "pad", "groups")}
        return _D("val", _emit(ctx, "conv_eb", [dy.name, fnode.inputs[1]], f"{finf.base}.dx",
                               xs, {**at, "in_shape": xs}, info))

    def is_avg(n: Node) -> bool:
        p = ctx.g.param_of_value(n.inputs[1]) if n.op == "conv" else None
        return p is not None and p.kind == "avg"

    if op in ("avg_pool2d_backward", "_adaptive_avg_pool2d_backward"):
        dy, xd = _val(env, args[0]), _val(env, args[1])
        fnode, finf = _fwd_by(ctx, op, lambda n: is_avg(n) and n.inputs[0] == xd.name)
        return avg_eb(dy, fnode, finf)

    if op == "expand" and is_grad(_val(env, args[0])):     # backward of mean: expand, div
        dy = _val(env, args[0])
        fnode, finf = _fwd_of(ctx, dy.name, op)
        if not is_avg(fnode):
            raise unsupported("expand")
        return _D("meanexp", dy.name, data=(fnode, finf))

    if op == "div" and isinstance(args[0], torch.fx.Node) and _val(env, args[0]).kind == "meanexp":
        d = _val(env, args[0])
        fnode, finf = d.data
        kh, kw = ctx.g.values[fnode.inputs[1]].shape[2:]
        if float(args[1]) != float(kh * kw):
            raise EdgecError("internal error: unexpected mean backward")
        return avg_eb(_D("val", d.name), fnode, finf)

    # ---- backward ops ----
    if op == "threshold_backward":
        dy, y = _val(env, args[0]), _val(env, args[1])
        if float(args[2]) != 0.0:
            raise EdgecError("internal error: unexpected threshold_backward")
        fnode, finf = _fwd_by(ctx, op, lambda n: n.op == "relu" and n.outputs[0] == y.name)
        info = _Info(finf.layer, finf.loc, finf.base, grad_of=fnode.inputs[0])
        out = _emit(ctx, "relu_bwd", [dy.name, y.name], f"{finf.base}.dx",
                    _shape(ctx, fnode.inputs[0]), {}, info)
        return _D("val", out)

    if op == "max_pool2d_with_indices_backward":
        dy, xd = _val(env, args[0]), _val(env, args[1])
        fnode, finf = _fwd_by(ctx, op, lambda n: n.op == "maxpool" and n.inputs[0] == xd.name)
        info = _Info(finf.layer, finf.loc, finf.base, grad_of=fnode.inputs[0])
        out = _emit(ctx, "maxpool_bwd", [dy.name, xd.name], f"{finf.base}.dx",
                    _shape(ctx, xd.name), dict(fnode.attrs), info)
        return _D("val", out)

    if op == "convolution_backward":
        dy, xd, wd = _val(env, args[0]), _val(env, args[1]), _val(env, args[2])
        fnode, finf = _fwd_by(ctx, op, lambda n: n.op == "conv"
                              and n.inputs[:2] == [xd.name, wd.name])
        st, pd = fnode.attrs["stride"], fnode.attrs["pad"]
        grp = {"groups": fnode.attrs["groups"]} if "groups" in fnode.attrs else {}
        created: dict[int, _D] = {}

        def pick(i):
            if i in created:
                return created[i]
            if i == 0:
                xs = _shape(ctx, xd.name)
                info = _Info(finf.layer, finf.loc, finf.base, grad_of=xd.name)
                d = _emit(ctx, "conv_eb", [dy.name, wd.name], f"{finf.base}.dx", xs,
                          {"stride": st, "pad": pd, "in_shape": xs, **grp}, info)
            elif i == 1:
                ws = _shape(ctx, wd.name)
                info = _Info(finf.layer, finf.loc, finf.base, grad_of=wd.name)
                d = _emit(ctx, "conv_wg", [dy.name, xd.name], g.fresh(f"{finf.base}.dw"), ws,
                          {"stride": st, "pad": pd, "kernel": tuple(ws[2:]), **grp}, info)
            else:
                if len(fnode.inputs) < 3:
                    return _D("none")
                b = fnode.inputs[2]
                info = _Info(finf.layer, finf.loc, finf.base, grad_of=b)
                d = _emit(ctx, "bias_grad", [dy.name], g.fresh(f"{finf.base}.db"),
                          _shape(ctx, b), {}, info)
            created[i] = _D("val", d)
            return created[i]
        return _D("tuple", data=pick)

    if op == "mm":
        a, b = _val(env, args[0]), _val(env, args[1])
        ia = ctx.info.get(a.name)
        # EB: dy[N,O] @ W[O,F]
        if ia is not None and ia.grad_of and not a.T and b.name in ctx.param_module and not b.T:
            fnode, finf = _fwd_of(ctx, a.name, op)
            if fnode.op != "linear" or fnode.inputs[1] != b.name:
                raise EdgecError("internal error: unexpected mm in the backward")
            xin = fnode.inputs[0]
            info = _Info(finf.layer, finf.loc, finf.base, grad_of=xin)
            out = _emit(ctx, "linear_eb", [a.name, b.name], f"{finf.base}.dx",
                        _shape(ctx, xin), {}, info)
            return _D("val", out)
        # WG: dy^T[O,N] @ x[N,F] -> dW[O,F];  x^T[F,N] @ dy[N,O] -> dW^T
        for dy, xx, transposed in ((a, b, False), (b, a, True)):
            idy = ctx.info.get(dy.name)
            if idy is not None and idy.grad_of and dy.T != transposed and xx.T == transposed:
                fnode, finf = _fwd_of(ctx, dy.name, op)
                if fnode.op != "linear" or fnode.inputs[0] != xx.name:
                    continue
                w = fnode.inputs[1]
                info = _Info(finf.layer, finf.loc, finf.base, grad_of=w)
                out = _emit(ctx, "linear_wg", [dy.name, xx.name], g.fresh(f"{finf.base}.dw"),
                            _shape(ctx, w), {}, info)
                return _D("val", out, transposed)
        raise unsupported("matmul", " (only nn.Linear / F.linear with parameters)")

    if op == "sum":
        dy = _val(env, args[0])
        idy = ctx.info.get(dy.name)
        if dy.kind == "val" and not dy.T and idy is not None and idy.grad_of:
            fnode, finf = _fwd_of(ctx, dy.name, op)
            nd = len(_shape(ctx, dy.name))
            dims = sorted(int(d) % nd for d in (args[1] if len(args) > 1 else range(nd)))
            if fnode.op in ("linear", "conv") and len(fnode.inputs) == 3 \
                    and dims == [d for d in range(nd) if d != 1]:
                b = fnode.inputs[2]
                info = _Info(finf.layer, finf.loc, finf.base, grad_of=b)
                out = _emit(ctx, "bias_grad", [dy.name], g.fresh(f"{finf.base}.db"),
                            _shape(ctx, b), {}, info)
                return _D("val", out)
        raise unsupported("sum")

    raise unsupported()
