"""ONNX frontend: a float ONNX model -> edgec's float training graph, without running any
user code.

Accepted (default domain, opset >= 13, one float input with a static shape
``(N, C, H, W)`` or ``(N, F)``, one output, the logits ``(N, K)``), each op mapped onto
the graph ops the PyTorch frontend makes of the same layer (docs/usage.md lists them):

* ``Conv`` (2-D, any groups, dilation 1, symmetric explicit pads, weight/bias
  initializers), ``Gemm`` (alpha = beta = 1, transA = 0, B an initializer, C an optional
  1-D bias), ``MatMul`` with an initializer ``[F, O]``, optionally followed by ``Add`` of
  a 1-D bias, ``BatchNormalization`` (inference form: two depthwise 1x1 convs),
* ``Relu``, ``Clip`` (constant bounds), ``MaxPool``, ``AveragePool``,
  ``GlobalAveragePool``, ``ReduceMean`` over H, W, the residual ``Add`` of two
  activations,
* views: ``Flatten`` / ``Reshape`` / ``Squeeze`` to ``(N, features)`` (and back),
  ``Identity``, ``Dropout``, a ``Transpose`` of size-1 dims; nodes that only compute
  constants (``Constant``, ``Identity`` of an initializer, ``Shape``, ``Gather`` ...) are
  folded first (``onnx_ops/fold.py``).

Parameters are named by their weight initializer: ``conv1.weight`` -> module ``conv1``, so
one user.mask works for the .py and the .onnx of a model; a weight whose initializer name
does not end in ``.weight`` is named after the module the node ran in (from torch.onnx's
node name ``/layer1/layer1.0/conv1/Conv`` -> ``layer1.0.conv1``; the exporter renames the
weights it folds a BatchNorm into), else names its module itself (characters outside
``[A-Za-z0-9_.]`` become ``_``); the parameters are then ``<module>.weight`` /
``<module>.bias``.  Ops without parameters take their value names from the node's module
the way capture() does (``layer1.0.relu``, ``layer1.0.add``, ``relu`` at the top level), and
parameters and values are ordered as capture() orders them, so a model exported with its
BatchNorms compiles to the program its model.py gives.
``Gemm`` with transB = 0 and ``MatMul`` store the weight as ``[F, O]``: edgec's parameter is
its transpose ``[O, F]`` (PyTorch's Linear layout).

The forward ops come from the ONNX nodes (loc ``model.onnx:node <i> (<name>)``); the loss
gradient and the backward ops are derived by the autodiff pass
(:func:`edgec.compiler.passes.autodiff.derive_backward`) over edgec's forward ops; each
ONNX op_type is imported by its handler in ``onnx_ops/`` (``onnx_ops/table.py``).
``example_input`` (calibration data, numerics.md section 6) is ``x`` from
``--calib FILE.npz`` if given, else ``torch.randn(shape)`` drawn from
``torch.Generator().manual_seed(0)``.  An equivalent ``torch.nn.Module`` is built from the
same parsed layers (for verify's float autograd fidelity check).
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from edgec.isa.errors import EdgecError
from edgec.compiler.ir.graph import Graph
from edgec.compiler.passes.autodiff import derive_backward
from edgec.compiler.frontend.onnx_ops.context import (SUPPORTED, OnnxCall, OnnxImport,
                                                      module_scopes)
from edgec.compiler.frontend.onnx_ops.fold import try_fold
from edgec.compiler.frontend.onnx_ops.table import HANDLERS


class OnnxNet(torch.nn.Module):
    """The parsed ONNX model as a torch module: conv / linear / BatchNorm submodules named
    like the ONNX weight initializers; ``steps`` is the forward program, a list of
    ``(kind, module name | attrs, input values, output value)`` over edgec value names
    (``x`` the input, ``out`` the logits)."""

    def __init__(self, steps, out: str):
        super().__init__()
        self.steps = steps
        self.out = out

    def forward(self, x):
        mods = dict(self.named_modules())
        env = {"x": x}
        for kind, a, ins, out in self.steps:
            v = [env[i] for i in ins]
            if kind in ("conv", "linear", "bn"):
                y = mods[a](v[0])
            elif kind == "relu":
                y = torch.relu(v[0])
            elif kind == "hardtanh":
                y = F.hardtanh(v[0], a[0], a[1])
            elif kind == "maxpool":
                y = F.max_pool2d(v[0], a["kernel"], a["stride"], a["pad"])
            elif kind == "avg":
                y = F.avg_pool2d(v[0], a["kernel"], a["stride"], a["pad"])
            elif kind == "add":
                y = v[0] + v[1]
            else:                               # reshape
                y = v[0].reshape(a)
            env[out] = y
        return env[self.out]


def load_onnx(path: str, calib: str | None = None):
    """Parse ``path``; returns (torch module, example_input, float training Graph)."""
    m = _read_model(path)
    G = m.graph
    inits = _initializers(G, os.path.basename(path))
    inp, dims = _model_input(path, G, inits)
    if len(G.output) != 1:
        raise EdgecError(f"{path}: the model must have exactly one output (the logits), "
                         f"has {len(G.output)}")
    imp = _import_forward(path, G, inits, inp.name, dims)
    g = imp.g
    _set_logits(path, g, imp.env, G.output[0].name, imp.N)
    g.remove_dead()
    _order_params(g, [t.name for t in G.initializer])
    derive_backward(g)
    try:
        g.verify()
    except ValueError as e:
        raise EdgecError(f"internal error: ONNX graph is malformed: {e}") from None

    # ---- torch module + calibration input ----
    model = _build_module(imp, g)
    example = _calibration(path, calib, tuple(dims))
    return model, example, g


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else ""


def _read_model(path: str):
    """The decoded, checked ModelProto (default-domain opset >= 13)."""
    import onnx
    if not os.path.exists(path):
        raise EdgecError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise EdgecError(f"{path}: not a regular file")
    try:
        m = onnx.load(path)
    except Exception as e:  # noqa: BLE001 - any decode failure
        raise EdgecError(f"{path}: not a readable ONNX model ({type(e).__name__}: "
                         f"{_first_line(e)})") from None
    ops = {o.domain or "": o.version for o in m.opset_import}
    if "" not in ops and "ai.onnx" not in ops:
        raise EdgecError(f"{path}: the model imports no default-domain (ai.onnx) opset")
    ver = ops.get("", ops.get("ai.onnx"))
    if ver < 13:
        raise EdgecError(f"{path}: opset {ver} is too old; edgec reads opset >= 13 "
                         "(re-export with opset_version=13 or newer)")
    try:
        onnx.checker.check_model(m)
    except Exception as e:  # noqa: BLE001
        raise EdgecError(f"{path}: invalid ONNX model: "
                         f"{_first_line(e) if str(e).strip() else e}") from None
    return m


def _initializers(G, base: str) -> dict[str, np.ndarray]:
    """Initializers and the values of Constant nodes, by tensor name."""
    from onnx import numpy_helper as nh
    inits = {}
    for t in G.initializer:
        try:
            inits[t.name] = nh.to_array(t)
        except Exception as e:  # noqa: BLE001 - bad dims / data type / raw data length
            raise EdgecError(f"{base}:initializer {t.name!r}: unreadable tensor "
                             f"({type(e).__name__}: {e})") from None
    for n in G.node:       # Constant nodes: treat as initializers
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    inits[n.output[0]] = nh.to_array(a.t)
                elif a.name in ("value_float", "value_int"):
                    inits[n.output[0]] = np.asarray(a.f if a.name == "value_float" else a.i)
                elif a.name in ("value_floats", "value_ints"):
                    inits[n.output[0]] = np.asarray(list(a.floats if a.name ==
                                                         "value_floats" else a.ints))
    return inits


def _model_input(path: str, G, inits) -> tuple:
    """(the one non-initializer input, its static dims (N, C, H, W) or (N, F))."""
    import onnx
    ins = [i for i in G.input if i.name not in inits]
    if len(ins) != 1:
        raise EdgecError(f"{path}: the model must have exactly one (non-initializer) input, "
                         f"has {len(ins)}")
    inp = ins[0]
    tt = inp.type.tensor_type
    if tt.elem_type != onnx.TensorProto.FLOAT:
        raise EdgecError(f"{path}: input '{inp.name}' must be float32")
    dims = []
    for i, d in enumerate(tt.shape.dim):
        if not d.HasField("dim_value") or d.dim_value < 1:
            sym = d.dim_param or "?"
            raise EdgecError(f"{path}: input '{inp.name}' has a dynamic dimension {i} "
                             f"('{sym}'); edgec needs a static shape (export with a fixed "
                             "batch size and no dynamic_axes)")
        dims.append(int(d.dim_value))
    if len(dims) not in (2, 4):
        raise EdgecError(f"{path}: input '{inp.name}' must be (N, C, H, W) or (N, F), "
                         f"got {tuple(dims)}")
    return inp, dims


def _import_forward(path: str, G, inits, input_name: str, dims) -> OnnxImport:
    """ONNX nodes -> edgec forward ops, each with the handler of its op_type."""
    import onnx
    base = os.path.basename(path)
    N = dims[0]
    consumers: dict[str, int] = {}
    for n in G.node:
        for i in n.input:
            if i:
                consumers[i] = consumers.get(i, 0) + 1
    g = Graph()
    g.inputs = ["x", "labels"]
    g.add_value("x", tuple(dims))
    g.add_value("labels", (N,), dtype="i32")
    imp = OnnxImport(g, N, list(G.node), inits, consumers, env={input_name: "x"},
                     scopes=module_scopes(G.node))
    for idx, n in enumerate(imp.nodes):
        if idx in imp.skip or n.op_type == "Constant":
            continue
        loc = f"{base}:node {idx} ({n.name or n.op_type})"
        at = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if n.domain not in ("", "ai.onnx"):
            raise EdgecError(f"{loc}: unsupported op '{n.domain}.{n.op_type}'; {SUPPORTED}")
        call = OnnxCall(imp, n, idx, loc, at)
        if try_fold(call):
            continue
        handler = HANDLERS.get(n.op_type)
        if handler is None:
            raise EdgecError(f"{loc}: unsupported op '{n.op_type}'; {SUPPORTED}")
        handler(call)
    return imp


def _set_logits(path: str, g: Graph, env: dict, out_t: str, N: int) -> None:
    """The ONNX output as ``logits`` (N, K)."""
    if out_t not in env:
        raise EdgecError(f"{path}: the output '{out_t}' is not computed from the input")
    z = env[out_t]
    if len(g.values[z].shape) != 2 or z == "x":
        raise EdgecError(f"{path}: the model must return logits of shape (N, K), got "
                         f"{g.values[z].shape}")
    g.outputs["logits"] = z
    g.meta["num_classes"] = int(g.values[z].shape[1])
    g.meta["batch"] = N


def _order_params(g: Graph, init_order: list[str]) -> None:
    """Model parameters in the order of their initializers (torch.onnx writes them in
    ``named_parameters()`` order), the frozen constants after them, and the graph values
    inputs, parameters, then the rest as made, as capture() has them.  A parameter under
    a name of its own (an ``Identity`` of a shared initializer) follows the parameter used
    just before it."""
    pos = {n: i for i, n in enumerate(init_order)}
    used = [k for k, p in g.params.items() if not p.is_const]
    order = sorted((k for k in used if k in pos), key=pos.get)
    for i, k in enumerate(used):
        if k in pos:
            continue
        prev = next((u for u in reversed(used[:i]) if u in order), None)
        order.insert(order.index(prev) + 1 if prev is not None else 0, k)
    order += [k for k, p in g.params.items() if p.is_const]
    g.params = {k: g.params[k] for k in order}
    first = list(g.inputs) + [g.params[k].value for k in order if k in set(used)]
    rest = [v for v in g.values if v not in set(first)]
    g.values = {v: g.values[v] for v in first + rest}


def _module_of(kind: str, a: dict, w: torch.Tensor, has_b: bool) -> torch.nn.Module:
    if kind == "conv":
        return torch.nn.Conv2d(w.shape[1] * a["groups"], w.shape[0], tuple(w.shape[2:]),
                               stride=a["stride"], padding=a["pad"], groups=a["groups"],
                               bias=has_b)
    if kind == "bn":
        m = torch.nn.BatchNorm2d(w.shape[0], eps=a["eps"])
        m.running_mean.copy_(torch.from_numpy(a["mean"].copy()))
        m.running_var.copy_(torch.from_numpy(a["var"].copy()))
        return m.eval()
    return torch.nn.Linear(w.shape[1], w.shape[0], bias=has_b)


def _build_module(imp: OnnxImport, g: Graph) -> OnnxNet:
    net = OnnxNet(imp.steps, g.outputs["logits"])
    params = imp.params
    order: dict[str, int] = {}
    for i, p in enumerate(g.params.values()):
        order.setdefault(p.module, i)
    for mod in sorted(imp.mod_specs, key=lambda m: order.get(m, len(order))):
        kind, a = imp.mod_specs[mod]
        w = torch.from_numpy(params[f"{mod}.weight"].copy())
        has_b = f"{mod}.bias" in params
        m = _module_of(kind, a, w, has_b)
        with torch.no_grad():
            m.weight.copy_(w)
            if has_b:
                m.bias.copy_(torch.from_numpy(params[f"{mod}.bias"].copy()))
        parent = net
        parts = mod.split(".")
        for p in parts[:-1]:
            if not hasattr(parent, p) or not isinstance(getattr(parent, p), torch.nn.Module):
                parent.add_module(p, torch.nn.Module())
            parent = getattr(parent, p)
        if hasattr(parent, parts[-1]):
            raise EdgecError(f"module name '{mod}' clashes with another layer's name")
        parent.add_module(parts[-1], m)
    names = [n for n, _ in net.named_parameters()]
    if sorted(names) != sorted(p for p in g.params if not g.params[p].is_const):
        raise EdgecError("internal error: ONNX module parameters do not match the graph")
    return net.eval()


def _calibration(path: str, calib: str | None, shape) -> torch.Tensor:
    if calib is None:
        return torch.randn(shape, generator=torch.Generator().manual_seed(0))
    try:
        with np.load(calib, allow_pickle=False) as z:
            key = "x" if "x" in z.files else (z.files[0] if z.files else None)
            if key is None:
                raise EdgecError(f"{calib}: empty .npz (needs an array 'x')")
            x = np.asarray(z[key])
    except EdgecError:
        raise
    except Exception as e:  # noqa: BLE001
        raise EdgecError(f"{calib}: cannot read calibration data ({type(e).__name__}: {e})") \
            from None
    if tuple(x.shape) != tuple(shape) or x.dtype.kind != "f":
        raise EdgecError(f"{calib}: calibration array must be float {tuple(shape)} (the "
                         f"input shape of {os.path.basename(path)}), got {x.dtype} "
                         f"{tuple(x.shape)}")
    return torch.from_numpy(x.astype(np.float32))
