"""The capture context the aten handlers share: value descriptors, per-value layer/location
records, value naming, node emission and the attribution of backward ops to their forward
op (see capture.py for the naming scheme)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from edgec.isa.errors import EdgecError
from edgec.compiler.ir.graph import Graph, Node, Param
from edgec.compiler.frontend.load import construction_site

SUPPORTED = ("edgec supports Conv2d (incl. grouped/depthwise), Linear, BatchNorm2d, ReLU, "
             "ReLU6/Hardtanh, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, residual add, "
             "torch.cat / split / chunk along channels, x * s per-channel gates "
             "(s of shape (N, C, 1, 1)), Dropout/Identity, flatten")
META_KEY = "edgec_module"

# leaf module type -> the edgec op it owns (its name becomes the value base)
OWNS = {
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

# aten ops that only allocate/copy: in an error inside a torch.nn layer, the layer's type
# names the op better (a user's module is no op: there the aten op is what the user wrote)
PLUMBING = {"empty", "empty_like", "zeros", "zeros_like", "ones", "full", "bernoulli_",
            "bernoulli", "copy_", "fill_", "new_empty", "rand", "rand_like", "_to_copy",
            "expand", "div"}


@dataclass
class Desc:
    """Descriptor of an fx node's value in edgec terms."""
    kind: str                    # val | tuple | indices | loss | logsoftmax | nllgrad | none
    name: str | None = None      # edgec value (kind val)
    T: bool = False              # 2-D transpose of ``name``
    data: Any = None


@dataclass
class ValueInfo:
    layer: str | None
    loc: str | None
    base: str | None
    grad_of: str | None = None   # forward value this backward value is the gradient of
    op: str | None = None        # the aten op of the forward node (what the user wrote)


@dataclass
class CaptureCtx:
    g: Graph
    model_file: str              # absolute path
    base_name: str               # basename for locs
    n: int
    info: dict[str, ValueInfo] = field(default_factory=dict)
    producer: dict[str, Node] = field(default_factory=dict)
    bases: set[str] = field(default_factory=set)
    param_module: dict[str, str] = field(default_factory=dict)   # param value -> module
    module_types: dict[str, type] = field(default_factory=dict)
    modules: dict[str, torch.nn.Module] = field(default_factory=dict)
    bn: dict[str, dict] = field(default_factory=dict)      # BatchNorm input -> its record


def aten_name(target) -> str:
    s = str(target)
    if s.startswith("aten."):
        return s.split(".")[1]
    return getattr(target, "__name__", s)


def module_of(fxn) -> str | None:
    c = fxn.meta.get("custom") or {}
    return c.get(META_KEY)


def source_loc(ctx: CaptureCtx, fxn) -> str | None:
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
        return module_loc(ctx, module_of(fxn))
    return f"{ctx.base_name}:{line}"


def module_loc(ctx: CaptureCtx, mod: str | None) -> str | None:
    while mod is not None:
        m = ctx.modules.get(mod)
        site = construction_site(m) if m is not None else None
        if site is not None and site[0] == ctx.model_file:
            return f"{ctx.base_name}:{site[1]}"
        if not mod:
            break
        mod = mod.rpartition(".")[0]
    return None


def new_forward_base(ctx: CaptureCtx, fxn, op: str, default_base: str) -> tuple[str, str]:
    """(layer, fresh value base) of a forward op: the owning module's name when the module
    owns ``op``, else ``<module>.<default_base>``."""
    mod = module_of(fxn)
    if mod is None:
        mod = ""
    layer = mod if mod else "forward"
    mtype = ctx.module_types.get(mod)
    if mod and mtype is not None and OWNS.get(mtype) == op:
        base = mod
    else:
        base = f"{mod}.{default_base}" if mod else default_base
    b, i = base, 1
    while b in ctx.bases:
        b = f"{base}_{i}"
        i += 1
    ctx.bases.add(b)
    return layer, b


def pair(v, n=2) -> tuple[int, ...]:
    if isinstance(v, (list, tuple)):
        v = [int(a) for a in v]
        if len(v) == 1:
            v = v * n
        return tuple(v)
    return (int(v),) * n


def shape_of(ctx: CaptureCtx, name: str) -> tuple[int, ...]:
    return ctx.g.values[name].shape


def emit(ctx: CaptureCtx, op, inputs, out, shape, attrs, info: ValueInfo) -> str:
    ctx.g.add_value(out, shape)
    node = ctx.g.add_node(op, inputs, [out], attrs, layer=info.layer, loc=info.loc)
    ctx.producer[out] = node
    ctx.info[out] = info
    return out


def grad_info(finf: ValueInfo, of: str) -> ValueInfo:
    """The record of a backward value: the forward op's layer, location and base, and the
    forward value ``of`` it is the gradient of."""
    return ValueInfo(finf.layer, finf.loc, finf.base, grad_of=of, op=finf.op)


def is_grad(ctx: CaptureCtx, d: Desc) -> bool:
    i = ctx.info.get(d.name) if d.kind == "val" else None
    return i is not None and i.grad_of is not None


def forward_of_grad(ctx: CaptureCtx, dy: str, what: str) -> tuple[Node, ValueInfo]:
    """The forward node whose output ``dy`` is the gradient of."""
    inf = ctx.info.get(dy)
    y = inf.grad_of if inf else None
    node = ctx.producer.get(y) if y else None
    if node is None:
        raise EdgecError(f"internal error: cannot attribute backward op {what} "
                         f"(operand {dy!r} is not a known gradient)")
    return node, ctx.info[y]


def forward_matching(ctx: CaptureCtx, what: str, pred) -> tuple[Node, ValueInfo]:
    """The (last) forward node satisfying ``pred``: backward aten ops are matched to their
    forward op through the forward operands they take (weights, inputs, outputs)."""
    for node in reversed(ctx.g.nodes):
        if pred(node) and ctx.info.get(node.outputs[0]) is not None \
                and ctx.info[node.outputs[0]].grad_of is None:
            return node, ctx.info[node.outputs[0]]
    raise EdgecError(f"internal error: cannot attribute backward op {what}")


def lazy_tuple(member) -> Desc:
    """A tuple-valued node (a backward returning dx, dw, db) whose member ``i`` is emitted
    once, when first read by getitem: ``member(i)`` -> the edgec value, or None for a
    member that is not there (``Desc("none")``)."""
    made: dict[int, Desc] = {}

    def pick(i):
        if i in made:
            return made[i]
        d = member(i)
        if d is None:
            return Desc("none")
        made[i] = Desc("val", d)
        return made[i]
    return Desc("tuple", data=pick)


def arg_of(fxn, i: int, name: str, default):
    if len(fxn.args) > i:
        return fxn.args[i]
    return fxn.kwargs.get(name, default)


def desc_of(env, a, what="operand") -> Desc:
    d = env.get(a) if isinstance(a, torch.fx.Node) else None
    if d is None:
        raise EdgecError(f"internal error: {what} {a!r} has no edgec value")
    return d


def add_const_param(ctx: CaptureCtx, name: str, kind: str, module: str, shape) -> str:
    """A frozen constant (BatchNorm normalisation, average-pool weight) as a parameter;
    its float value is derived from the model by ``const_values``."""
    if name in ctx.g.params:
        raise EdgecError(f"{ctx.base_name}: module '{module}' is called more than once; "
                         "shared modules are not supported")
    ctx.g.params[name] = Param(name, f"param:{name}", tuple(shape), module=module, kind=kind,
                               trainable=False)
    ctx.g.add_value(f"param:{name}", tuple(shape))
    return f"param:{name}"


def claim_params(ctx: CaptureCtx, values: list[str], loc: str | None) -> None:
    used = ctx.g.meta.setdefault("_claimed", {})
    for v in values:
        if v in used:
            raise EdgecError(f"{loc or ctx.base_name}: parameter '{v[len('param:'):]}' is used "
                             f"by more than one op (first at {used[v]}); shared weights "
                             f"(a module called twice) are not supported")
        used[v] = loc or "?"


@dataclass
class AtenCall:
    """One call_function node being converted: what every handler reads."""
    ctx: CaptureCtx
    fxn: Any                     # the torch.fx.Node
    env: dict                    # fx node -> Desc
    op: str                      # aten op name (``convolution``, ``relu_`` ...)
    loc: str | None              # model.py:LINE

    @property
    def args(self) -> tuple:
        return self.fxn.args

    def val(self, i: int) -> Desc:
        """The descriptor of positional argument ``i``."""
        return desc_of(self.env, self.fxn.args[i])

    def forward_info(self, op: str, default_base: str | None = None) -> ValueInfo:
        """The record of this forward edgec ``op``'s output, with a fresh base
        (:func:`new_forward_base`; ``default_base`` defaults to ``op``)."""
        layer, base = new_forward_base(self.ctx, self.fxn, op, default_base or op)
        return ValueInfo(layer, self.loc, base, op=self.op)

    def backward_of(self) -> ValueInfo | None:
        """For a node of the backward pass (no module, no model.py line): the record of
        the forward op whose error it consumes (the producer of the value its first
        gradient operand is the gradient of)."""
        if module_of(self.fxn) is not None or self.loc is not None:
            return None
        for a in self.fxn.args:
            d = self.env.get(a) if isinstance(a, torch.fx.Node) else None
            inf = self.ctx.info.get(d.name) if d is not None and d.name else None
            if inf is not None and inf.grad_of is not None:
                return self.ctx.info.get(inf.grad_of)
        return None

    def unsupported(self, name=None, detail="") -> EdgecError:
        """The user error for this node: the op (or the torch.nn layer edgec lacks), the
        layer, the model.py line and what edgec supports.  A backward node has neither
        layer nor line: it is reported as the forward op whose error it consumes."""
        ctx, op = self.ctx, self.op
        bwd = self.backward_of()
        if bwd is not None:         # name the forward op the user wrote, its layer, line
            return EdgecError(f"{bwd.loc or ctx.base_name}: unsupported op "
                              f"'{bwd.op or name or op}' (layer '{bwd.layer or 'forward'}'; "
                              f"its backward needs aten '{op}'){detail}; {SUPPORTED}")
        mod = module_of(self.fxn)
        layer = mod if mod else "forward"
        mt = ctx.module_types.get(mod) if mod else None
        extra = f", {mt.__name__}" if mt is not None and mod else ""
        where = self.loc or ctx.base_name
        shown = name or op
        torch_nn = mt is not None and mt.__module__.startswith("torch.nn")
        if torch_nn and mt not in OWNS and not any(True for _ in ctx.modules[mod].children()):
            shown, detail = mt.__name__.lower(), ""    # a torch.nn layer edgec lacks
        elif name is None and torch_nn and op in PLUMBING:
            shown = mt.__name__.lower()
        return EdgecError(f"{where}: unsupported op '{shown}' (layer '{layer}'{extra})"
                          f"{detail}; {SUPPORTED}")
