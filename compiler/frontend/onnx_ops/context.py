"""What the ONNX op handlers share: the import state (graph, ONNX tensor -> edgec value,
parameters, the torch module's program) and, per ONNX node, its location, attributes and
the helpers that read operands, add parameters and emit edgec ops."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgec.isa.errors import EdgecError
from edgec.compiler.ir.graph import Graph, Param

SUPPORTED = ("edgec supports Conv (incl. grouped/depthwise), Gemm, MatMul(+Add), "
             "BatchNormalization, Relu, Clip (ReLU6/Hardtanh), MaxPool, AveragePool, "
             "GlobalAveragePool, ReduceMean over H,W, residual Add, Dropout, Identity, "
             "Flatten/Reshape/Squeeze to (N, features), constant shape arithmetic")


#: ONNX ops that only compute constants (shapes); not counted as a module's computation
CONST_OPS = frozenset({"Constant", "Identity", "Cast", "Shape", "Gather", "Unsqueeze",
                       "Squeeze", "Concat", "Reshape", "Slice", "Mul", "Div", "Add", "Sub"})


def scope_dir(node_name: str) -> str | None:
    """The module scope of a torch.onnx node name: ``/layer1/layer1.0/conv1/Conv`` ->
    ``/layer1/layer1.0/conv1``; None for a name without one."""
    if not node_name.startswith("/") or node_name.count("/") < 2:
        return None
    return node_name.rsplit("/", 1)[0]


def module_of_scope(d: str) -> str:
    """The torch module name of a scope: ``/layer1/layer1.0/conv1`` -> ``layer1.0.conv1``
    (a component repeating its parent's name, ``layer1`` / ``layer1.0``, is relative to it)."""
    parts, prev = [], None
    for comp in d.strip("/").split("/"):
        if prev is not None and comp.startswith(prev + "."):
            parts.append(comp[len(prev) + 1:])
        else:
            parts.append(comp)
        prev = comp
    return ".".join(parts)


def module_scopes(nodes) -> dict[str, int]:
    """Scope -> how many computing nodes it holds directly (-1: it has sub-scopes)."""
    count: dict[str, int] = {}
    for n in nodes:
        d = scope_dir(n.name)
        if d is None:
            continue
        count.setdefault(d, 0)
        if n.op_type not in CONST_OPS:
            count[d] += 1
    for d in list(count):
        up = d.rsplit("/", 1)[0]
        while up:
            count[up] = -1
            up = up.rsplit("/", 1)[0]
    return count


def sanitize(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.]", "_", name).strip(".") or "layer"
    return s


@dataclass
class OnnxImport:
    """The state of one import."""
    g: Graph
    N: int                                   # batch size
    nodes: list                              # the ONNX graph's nodes, in order
    inits: dict[str, np.ndarray]             # initializers and Constant outputs
    consumers: dict[str, int]                # ONNX tensor -> how many node inputs read it
    env: dict[str, str] = field(default_factory=dict)      # onnx tensor -> edgec value
    params: dict[str, np.ndarray] = field(default_factory=dict)
    steps: list = field(default_factory=list)   # OnnxNet program: (kind, module | attrs)
    mod_specs: dict = field(default_factory=dict)   # module -> (kind, attrs)
    bases: set[str] = field(default_factory=lambda: {"loss"})
    skip: set[int] = field(default_factory=set)     # node indices folded into another op
    aliases: dict[str, str] = field(default_factory=dict)   # reshape output -> its input
    scopes: dict[str, int] = field(default_factory=dict)    # module_scopes(nodes)

    def fresh_base(self, b: str) -> str:
        c, i = b, 1
        while c in self.bases:
            c = f"{b}_{i}"
            i += 1
        self.bases.add(c)
        return c


@dataclass
class OnnxCall:
    """One ONNX node being imported: what every handler reads."""
    imp: OnnxImport
    n: Any                        # the onnx NodeProto
    idx: int
    loc: str                      # model.onnx:node <i> (<name>)
    at: dict                      # attribute name -> value

    @property
    def g(self) -> Graph:
        return self.imp.g

    def module(self) -> tuple[str | None, bool]:
        """(the torch module this node ran in, or None; whether that module is a leaf
        whose only computation is this node, i.e. it owns the op) from the node name.  A
        module called again (``relu_1`` beside ``relu``) is the module ``relu``."""
        d = scope_dir(self.n.name)
        if d is None:
            return None, False
        owns = self.imp.scopes.get(d, 0) == 1
        m = re.fullmatch(r"(.*)_\d+", d)
        if m and m.group(1) in self.imp.scopes:
            d = m.group(1)
        return module_of_scope(d), owns

    def forward_base(self, default: str) -> tuple[str, str]:
        """(layer, base) of an op without parameters, named like the PyTorch frontend
        names it: the owning module (``layer1.0.relu``), ``<module>.<default>`` for a call
        inside a larger module (``layer1.0.add``), ``<default>`` at the top."""
        mod, owns = self.module()
        if not mod:
            return "forward", default
        if owns:
            d = scope_dir(self.n.name)
            return mod, module_of_scope(d)
        return mod, f"{mod}.{default}"

    def bad(self, detail) -> EdgecError:
        return EdgecError(f"{self.loc}: unsupported {self.n.op_type}: {detail}; {SUPPORTED}")

    def data_in(self, i=0) -> str:
        """The edgec value of input ``i`` (computed from the model input)."""
        t = self.n.input[i]
        if t not in self.imp.env:
            what = ("a constant (edgec folds constants only into weights and shapes)"
                    if t in self.imp.inits else "not computed from the model input")
            raise EdgecError(f"{self.loc}: input '{t}' of {self.n.op_type} is {what}; "
                             f"{SUPPORTED}")
        return self.imp.env[t]

    def const_in(self, i, what) -> np.ndarray | None:
        """The constant value of input ``i`` (None when absent)."""
        t = self.init_of(i, what)
        return None if t is None else self.imp.inits[t]

    def init_of(self, i, what) -> str | None:
        """The initializer name of input ``i`` (None when absent)."""
        n = self.n
        if len(n.input) <= i or not n.input[i]:
            return None
        t = n.input[i]
        if t not in self.imp.inits:
            raise EdgecError(f"{self.loc}: the {what} '{t}' of {n.op_type} must be an "
                             "initializer (a constant)")
        return t

    def add_param(self, wname, w, b) -> str:
        """Parameters ``<module>.weight`` (and ``.bias``) from the weight initializer's
        name (else the module the node ran in); returns the module name."""
        imp, g = self.imp, self.imp.g
        scope, owns = self.module()
        if wname.endswith(".weight"):
            mod = wname[:-len(".weight")]
        elif scope and owns:        # a weight the exporter renamed (BatchNorm folded in)
            mod = scope
        else:
            mod = sanitize(wname)
        if mod in imp.mod_specs or not re.fullmatch(r"[A-Za-z_0-9][A-Za-z_0-9.]*", mod):
            mod = imp.fresh_base(sanitize(mod) + "_")
        pw = f"{mod}.weight"
        for pn, arr in ((pw, w), (f"{mod}.bias", b)):
            if arr is None:
                continue
            if pn in imp.params:
                raise EdgecError(f"{self.loc}: initializer for '{pn}' is used by more than "
                                 "one op; shared weights are not supported")
            imp.params[pn] = np.ascontiguousarray(arr, dtype=np.float32)
            k = "weight" if pn == pw else "bias"
            g.params[pn] = Param(pn, f"param:{pn}", tuple(arr.shape), module=mod, kind=k)
            g.add_value(f"param:{pn}", tuple(arr.shape))
        return mod

    def add_const(self, name: str, kind: str, module: str, shape) -> str:
        """A frozen constant (BatchNorm normalisation, average-pool weight) as a parameter,
        as the PyTorch frontend makes it; its float value comes from the torch module
        (``capture.const_values``)."""
        if name in self.g.params:
            raise EdgecError(f"{self.loc}: module '{module}' is used more than once; shared "
                             "modules are not supported")
        self.g.params[name] = Param(name, f"param:{name}", tuple(shape), module=module,
                                    kind=kind, trainable=False)
        self.g.add_value(f"param:{name}", tuple(shape))
        return f"param:{name}"

    def emit(self, op, ins, shape, attrs, base, layer, out_tensor, suffix="out",
             fresh=True) -> str:
        """Add edgec ``op`` producing ``<fresh base>.<suffix>``, bound to ONNX
        ``out_tensor`` (None: bound by the caller)."""
        b = self.imp.fresh_base(base) if fresh else base
        out = f"{b}.{suffix}"
        self.g.add_value(out, tuple(int(s) for s in shape))
        self.g.add_node(op, ins, [out], attrs, layer=layer, loc=self.loc)
        if out_tensor is not None:
            self.imp.env[out_tensor] = out
        return out

    def step(self, kind, a, ins, out) -> None:
        """One step of the torch module's forward program: ``out = kind(a)(*ins)``."""
        self.imp.steps.append((kind, a, list(ins), out))

    def shape(self, v: str) -> tuple:
        return self.g.values[v].shape

    def check_no_dilation(self) -> None:
        if any(int(d) != 1 for d in self.at.get("dilations", [1, 1])):
            raise self.bad(f"dilations={list(self.at['dilations'])}")

    def check_explicit_pads(self) -> None:
        ap = self.at.get("auto_pad", b"NOTSET")
        ap = ap.decode() if isinstance(ap, bytes) else ap
        if ap not in ("NOTSET", "VALID"):
            raise self.bad(f"auto_pad={ap} (export with explicit pads)")

    def symmetric_pads(self) -> list:
        pads = list(self.at.get("pads", [0, 0, 0, 0]))
        if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3]:
            raise self.bad(f"asymmetric pads={pads}")
        return pads
