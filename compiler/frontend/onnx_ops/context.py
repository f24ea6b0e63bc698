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

SUPPORTED = ("edgec supports Conv (group 1), Gemm, MatMul(+Add), Relu, MaxPool, Flatten, "
             "Reshape to (N, features)")


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

    def bad(self, detail) -> EdgecError:
        return EdgecError(f"{self.loc}: unsupported {self.n.op_type}: {detail}; {SUPPORTED}")

    def data_in(self, i=0) -> str:
        """The edgec value of input ``i`` (computed from the model input)."""
        t = self.n.input[i]
        if t not in self.imp.env:
            raise EdgecError(f"{self.loc}: input '{t}' of {self.n.op_type} is not computed "
                             "from the model input (constant folding is not supported)")
        return self.imp.env[t]

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
        name; returns the module name."""
        imp, g = self.imp, self.imp.g
        mod = wname[:-len(".weight")] if wname.endswith(".weight") else sanitize(wname)
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

    def emit(self, op, ins, shape, attrs, base, layer, out_tensor) -> str:
        """Add edgec ``op`` producing ``<fresh base>.out``, bound to ONNX ``out_tensor``."""
        b = self.imp.fresh_base(base)
        out = f"{b}.out"
        self.g.add_value(out, tuple(int(s) for s in shape))
        self.g.add_node(op, ins, [out], attrs, layer=layer, loc=self.loc)
        self.imp.env[out_tensor] = out
        return out

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
