"""ONNX frontend: a float ONNX model -> edgec's float training graph, without running any
user code.

Accepted (default domain, opset >= 13, one float input with a static shape
``(N, C, H, W)`` or ``(N, F)``, one output, the logits ``(N, K)``):

* ``Conv`` (2-D, group 1, dilation 1, symmetric explicit pads, weight/bias initializers),
* ``Gemm`` (alpha = beta = 1, transA = 0, B an initializer, C an optional 1-D bias),
  ``MatMul`` with an initializer ``[F, O]``, optionally followed by ``Add`` of a 1-D bias,
* ``Relu``, ``MaxPool`` (2-D, floor mode, dilation 1, pads <= kernel/2, no indices output),
* ``Flatten`` (axis 1) and ``Reshape`` to ``(N, features)``, ``Identity``, ``Constant``.

Parameters are named by their weight initializer: ``conv1.weight`` -> module ``conv1``, so
one user.mask works for the .py and the .onnx of a model; a weight whose initializer name
does not end in ``.weight`` names its module itself (characters outside ``[A-Za-z0-9_.]``
become ``_``) and the parameters are then called ``<module>.weight`` / ``<module>.bias``.
``Gemm`` with transB = 0 and ``MatMul`` store the weight as ``[F, O]``: edgec's parameter is
its transpose ``[O, F]`` (PyTorch's Linear layout).

The forward ops come from the ONNX nodes (loc ``model.onnx:node <i> (<name>)``); the loss
gradient and the backward ops are derived by :func:`derive_backward`, a reverse-mode pass
over edgec's forward ops.  ``example_input`` (calibration data, numerics.md section 6) is
``x`` from ``--calib FILE.npz`` if given, else ``torch.randn(shape)`` drawn from
``torch.Generator().manual_seed(0)``.  An equivalent ``torch.nn.Module`` is built from the
same parsed layers (for verify's float autograd fidelity check).
"""
from __future__ import annotations

import os
import re

import numpy as np
import torch
import torch.nn.functional as F

from edgec.isa.errors import EdgecError
from edgec.compiler.ir.graph import Graph, Param

SUPPORTED = ("edgec supports Conv (group 1), Gemm, MatMul(+Add), Relu, MaxPool, Flatten, "
             "Reshape to (N, features)")


class OnnxNet(torch.nn.Module):
    """The parsed ONNX model as a torch module: conv/linear submodules named like the
    ONNX weight initializers; ``steps`` is the forward program."""

    def __init__(self, steps):
        super().__init__()
        self.steps = steps          # list of (kind, module name | attrs)

    def forward(self, x):
        mods = dict(self.named_modules())
        for kind, a in self.steps:
            if kind in ("conv", "linear"):
                x = mods[a](x)
            elif kind == "relu":
                x = torch.relu(x)
            elif kind == "maxpool":
                x = F.max_pool2d(x, a["kernel"], a["stride"], a["pad"])
            elif kind == "reshape":
                x = x.reshape(x.shape[0], -1)
        return x


def _sanitize(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.]", "_", name).strip(".") or "layer"
    return s


def load_onnx(path: str, calib: str | None = None):
    """Parse ``path``; returns (torch module, example_input, float training Graph)."""
    import onnx
    from onnx import numpy_helper as nh

    base = os.path.basename(path)
    if not os.path.exists(path):
        raise EdgecError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise EdgecError(f"{path}: not a regular file")
    try:
        m = onnx.load(path)
    except Exception as e:  # noqa: BLE001 - any decode failure
        raise EdgecError(f"{path}: not a readable ONNX model ({type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})") from None
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
                         f"{str(e).strip().splitlines()[0] if str(e).strip() else e}") from None
    G = m.graph
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
    if len(G.output) != 1:
        raise EdgecError(f"{path}: the model must have exactly one output (the logits), "
                         f"has {len(G.output)}")
    N = dims[0]

    consumers: dict[str, int] = {}
    for n in G.node:
        for i in n.input:
            if i:
                consumers[i] = consumers.get(i, 0) + 1

    # ---- forward: ONNX nodes -> edgec forward ops ----
    g = Graph()
    g.inputs = ["x", "labels"]
    g.add_value("x", tuple(dims))
    g.add_value("labels", (N,), dtype="i32")
    env = {inp.name: "x"}           # onnx tensor -> edgec value
    params: dict[str, np.ndarray] = {}
    steps = []
    mod_specs = {}                  # module -> (kind, weight, bias, attrs)
    bases: set[str] = {"loss"}
    skip: set[int] = set()

    def fresh_base(b):
        c, i = b, 1
        while c in bases:
            c = f"{b}_{i}"
            i += 1
        bases.add(c)
        return c

    nodes = list(G.node)
    for idx, n in enumerate(nodes):
        if idx in skip or n.op_type == "Constant":
            continue
        loc = f"{base}:node {idx} ({n.name or n.op_type})"
        at = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}

        def bad(detail, n=n, loc=loc):
            return EdgecError(f"{loc}: unsupported {n.op_type}: {detail}; {SUPPORTED}")

        if n.domain not in ("", "ai.onnx"):
            raise EdgecError(f"{loc}: unsupported op '{n.domain}.{n.op_type}'; {SUPPORTED}")

        def data_in(i=0, n=n, loc=loc):
            t = n.input[i]
            if t not in env:
                raise EdgecError(f"{loc}: input '{t}' of {n.op_type} is not computed from the "
                                 "model input (constant folding is not supported)")
            return env[t]

        def init_of(i, what, n=n, loc=loc):
            if len(n.input) <= i or not n.input[i]:
                return None
            t = n.input[i]
            if t not in inits:
                raise EdgecError(f"{loc}: the {what} '{t}' of {n.op_type} must be an "
                                 "initializer (a constant)")
            return t

        def add_param(wname, bname, w, b, kind):
            mod = wname[:-len(".weight")] if wname.endswith(".weight") else _sanitize(wname)
            if mod in mod_specs or not re.fullmatch(r"[A-Za-z_0-9][A-Za-z_0-9.]*", mod):
                mod = fresh_base(_sanitize(mod) + "_")
            pw = f"{mod}.weight"
            for pn, arr in ((pw, w), (f"{mod}.bias", b)):
                if arr is None:
                    continue
                if pn in params:
                    raise EdgecError(f"{loc}: initializer for '{pn}' is used by more than "
                                     "one op; shared weights are not supported")
                params[pn] = np.ascontiguousarray(arr, dtype=np.float32)
                k = "weight" if pn == pw else "bias"
                g.params[pn] = Param(pn, f"param:{pn}", tuple(arr.shape), module=mod, kind=k)
                g.add_value(f"param:{pn}", tuple(arr.shape))
            return mod

        def emit(op, ins_, shape, attrs, base_, layer, out_tensor):
            b = fresh_base(base_)
            out = f"{b}.out"
            g.add_value(out, tuple(int(s) for s in shape))
            g.add_node(op, ins_, [out], attrs, layer=layer, loc=loc)
            env[out_tensor] = out
            return out

        op = n.op_type
        if op == "Identity":
            env[n.output[0]] = data_in()
            continue
        if op == "Conv":
            x = data_in()
            xs = g.values[x].shape
            if len(xs) != 4:
                raise bad("only 2-D convolutions on (N, C, H, W)")
            wn, bn = init_of(1, "weight"), init_of(2, "bias")
            w = inits[wn]
            if w.ndim != 4:
                raise bad("only 2-D convolutions")
            if int(at.get("group", 1)) != 1:
                raise bad(f"group={at['group']}")
            if any(int(d) != 1 for d in at.get("dilations", [1, 1])):
                raise bad(f"dilations={list(at['dilations'])}")
            ap = at.get("auto_pad", b"NOTSET")
            ap = ap.decode() if isinstance(ap, bytes) else ap
            if ap not in ("NOTSET", "VALID"):
                raise bad(f"auto_pad={ap} (export with explicit pads)")
            if "kernel_shape" in at and list(at["kernel_shape"]) != list(w.shape[2:]):
                raise bad("kernel_shape does not match the weight")
            pads = list(at.get("pads", [0, 0, 0, 0]))
            if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3]:
                raise bad(f"asymmetric pads={pads}")
            st = tuple(int(s) for s in at.get("strides", [1, 1]))
            pd = (int(pads[0]), int(pads[1]))
            if len(st) != 2 or min(st) < 1 or min(pd) < 0:
                raise bad(f"strides={list(st)}, pads={list(pads)} (strides >= 1, pads >= 0)")
            if w.shape[1] != xs[1]:
                raise EdgecError(f"{loc}: weight '{wn}' expects {w.shape[1]} input channels, "
                                 f"the input has {xs[1]}")
            b = inits[bn] if bn else None
            if b is not None and b.shape != (w.shape[0],):
                raise bad(f"bias shape {tuple(b.shape)}")
            mod = add_param(wn, bn, w, b, "conv")
            oh = (xs[2] + 2 * pd[0] - w.shape[2]) // st[0] + 1
            ow = (xs[3] + 2 * pd[1] - w.shape[3]) // st[1] + 1
            if oh < 1 or ow < 1:
                raise EdgecError(f"{loc}: the kernel is larger than the padded input")
            ins_ = [x, f"param:{mod}.weight"] + ([f"param:{mod}.bias"] if b is not None else [])
            emit("conv", ins_, (N, w.shape[0], oh, ow), {"stride": st, "pad": pd}, mod, mod,
                 n.output[0])
            mod_specs[mod] = ("conv", dict(stride=st, pad=pd))
            steps.append(("conv", mod))
            continue
        if op in ("Gemm", "MatMul"):
            x = data_in()
            xs = g.values[x].shape
            if len(xs) != 2:
                raise bad(f"input of shape {xs} (only (N, features); insert a Flatten)")
            wn = init_of(1, "weight")
            w = inits[wn]
            if w.ndim != 2:
                raise bad("the weight must be 2-D")
            out_t = n.output[0]
            bn = None
            if op == "Gemm":
                if float(at.get("alpha", 1.0)) != 1.0 or float(at.get("beta", 1.0)) != 1.0:
                    raise bad("alpha/beta other than 1")
                if int(at.get("transA", 0)) != 0:
                    raise bad("transA=1")
                if int(at.get("transB", 0)) == 0:
                    w = w.T
                bn = init_of(2, "bias")
                if bn is not None:
                    b = inits[bn]
                    if b.size != w.shape[0] or b.ndim > 2 or (b.ndim == 2 and b.shape[0] != 1):
                        raise bad(f"bias C of shape {tuple(b.shape)} (needs ({w.shape[0]},))")
            else:
                w = w.T
                # MatMul followed by an Add of a 1-D bias initializer: one linear
                users = [(j, u) for j, u in enumerate(nodes) if out_t in u.input]
                if len(users) == 1 and users[0][1].op_type == "Add" \
                        and consumers.get(out_t, 0) == 1:
                    j, u = users[0]
                    other = [t for t in u.input if t != out_t]
                    if len(other) == 1 and other[0] in inits \
                            and inits[other[0]].size == w.shape[0] \
                            and inits[other[0]].shape[-1] == w.shape[0]:
                        bn = other[0]
                        skip.add(j)
                        out_t = u.output[0]
            if w.shape[1] != xs[1]:
                raise EdgecError(f"{loc}: weight '{wn}' expects {w.shape[1]} input features, "
                                 f"the input has {xs[1]}")
            b = inits[bn].reshape(-1) if bn else None
            mod = add_param(wn, bn, w, b, "linear")
            ins_ = [x, f"param:{mod}.weight"] + ([f"param:{mod}.bias"] if b is not None else [])
            emit("linear", ins_, (N, w.shape[0]), {}, mod, mod, out_t)
            mod_specs[mod] = ("linear", {})
            steps.append(("linear", mod))
            continue
        if op == "Relu":
            x = data_in()
            emit("relu", [x], g.values[x].shape, {}, "relu", "forward", n.output[0])
            steps.append(("relu", None))
            continue
        if op == "MaxPool":
            x = data_in()
            xs = g.values[x].shape
            k = tuple(int(v) for v in at.get("kernel_shape", []))
            if len(xs) != 4 or len(k) != 2:
                raise bad("only 2-D pooling on (N, C, H, W)")
            if int(at.get("ceil_mode", 0)):
                raise bad("ceil_mode=1")
            if any(int(d) != 1 for d in at.get("dilations", [1, 1])):
                raise bad(f"dilations={list(at['dilations'])}")
            if int(at.get("storage_order", 0)) != 0 or (len(n.output) > 1 and n.output[1]):
                raise bad("the Indices output")
            ap = at.get("auto_pad", b"NOTSET")
            ap = ap.decode() if isinstance(ap, bytes) else ap
            if ap not in ("NOTSET", "VALID"):
                raise bad(f"auto_pad={ap} (export with explicit pads)")
            pads = list(at.get("pads", [0, 0, 0, 0]))
            if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3]:
                raise bad(f"asymmetric pads={pads}")
            pd = (int(pads[0]), int(pads[1]))
            st = tuple(int(s) for s in at.get("strides", [1, 1]))
            if len(st) != 2 or min(st) < 1 or min(k) < 1 or min(pd) < 0:
                raise bad(f"kernel_shape={list(k)}, strides={list(st)}, pads={list(pads)} "
                          "(kernel and strides >= 1, pads >= 0)")
            if pd[0] > k[0] // 2 or pd[1] > k[1] // 2:
                raise bad(f"pads={list(pd)} larger than half the kernel {list(k)}")
            oh = (xs[2] + 2 * pd[0] - k[0]) // st[0] + 1
            ow = (xs[3] + 2 * pd[1] - k[1]) // st[1] + 1
            if oh < 1 or ow < 1:
                raise EdgecError(f"{loc}: the pooling window is larger than the input")
            attrs = {"kernel": k, "stride": st, "pad": pd}
            emit("maxpool", [x], (N, xs[1], oh, ow), attrs, "maxpool", "forward",
                 n.output[0])
            steps.append(("maxpool", attrs))
            continue
        if op in ("Flatten", "Reshape"):
            x = data_in()
            xs = g.values[x].shape
            feat = int(np.prod(xs[1:]))
            if op == "Flatten":
                if int(at.get("axis", 1)) != 1:
                    raise bad(f"axis={at['axis']} (only axis=1)")
            else:
                sn = init_of(1, "shape")
                tgt = [int(v) for v in np.asarray(inits[sn]).reshape(-1)]
                tgt = [xs[i] if v == 0 and i < len(xs) else v for i, v in enumerate(tgt)]
                if tgt.count(-1) == 1:
                    known = int(np.prod([v for v in tgt if v != -1]))
                    tgt = [int(np.prod(xs)) // known if v == -1 else v for v in tgt]
                if tgt != [N, feat]:
                    raise bad(f"target shape {tgt} (only flatten to (N, features))")
            if tuple(xs) == (N, feat):
                env[n.output[0]] = x
                continue
            emit("reshape", [x], (N, feat), {"shape": (N, feat)}, "flatten",
                 "forward", n.output[0])
            steps.append(("reshape", None))
            continue
        raise EdgecError(f"{loc}: unsupported op '{op}'; {SUPPORTED}")

    out_t = G.output[0].name
    if out_t not in env:
        raise EdgecError(f"{path}: the output '{out_t}' is not computed from the input")
    z = env[out_t]
    if len(g.values[z].shape) != 2 or z == "x":
        raise EdgecError(f"{path}: the model must return logits of shape (N, K), got "
                         f"{g.values[z].shape}")
    # edgec graphs are chains: every intermediate value has exactly one consumer
    for v in g.values:
        us = g.users(v)
        if len(us) > 1:
            raise EdgecError(f"{us[1].loc}: value used by more than one op (branches and "
                             "residual connections are not supported from ONNX)")
    g.outputs["logits"] = z
    g.meta["num_classes"] = int(g.values[z].shape[1])
    g.meta["batch"] = N
    derive_backward(g)
    try:
        g.verify()
    except ValueError as e:
        raise EdgecError(f"internal error: ONNX graph is malformed: {e}") from None

    # ---- torch module + calibration input ----
    model = _build_module(steps, mod_specs, g, params)
    example = _calibration(path, calib, tuple(dims))
    return model, example, g


def _build_module(steps, specs, g: Graph, params) -> OnnxNet:
    net = OnnxNet(steps)
    for mod, (kind, a) in specs.items():
        w = torch.from_numpy(params[f"{mod}.weight"].copy())
        has_b = f"{mod}.bias" in params
        if kind == "conv":
            m = torch.nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), stride=a["stride"],
                                padding=a["pad"], bias=has_b)
        else:
            m = torch.nn.Linear(w.shape[1], w.shape[0], bias=has_b)
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
    if sorted(names) != sorted(g.params):
        raise EdgecError("internal error: ONNX module parameters do not match the graph")
    return net


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


def derive_backward(g: Graph) -> Graph:
    """Append the loss gradient and the reverse-mode backward of ``g``'s forward ops
    (softmax cross-entropy, mean): the same ops and value names capture() produces
    (``loss.dz``, ``<base>.dx``, ``grad:<param>``)."""
    fwd = list(g.nodes)
    z = g.outputs["logits"]
    V = g.values
    pvals = {p.value: p for p in g.params.values()}
    # which values depend on a parameter (need a gradient)
    needs = set(pvals)
    for n in fwd:
        if any(i in needs for i in n.inputs):
            needs.update(n.outputs)
    zp = g.producer(z)

    def base_of(n):
        return n.outputs[0][:-len(".out")] if n.outputs[0].endswith(".out") else n.outputs[0]

    def new(op, ins, name, shape, attrs, n):
        g.add_value(name, shape)
        g.add_node(op, ins, [name], attrs, layer=n.layer if op != "loss_grad" else "loss",
                   loc=n.loc)
        return name

    grad = {z: new("loss_grad", [z, "labels"], "loss.dz", V[z].shape, {}, zp)}
    for n in reversed(fwd):
        o = n.outputs[0]
        if o not in grad:
            continue
        dy, b = grad[o], base_of(n)
        x = n.inputs[0]
        if n.op in ("conv", "linear"):
            w = n.inputs[1]
            if x in needs:
                if n.op == "conv":
                    xs = V[x].shape
                    grad[x] = new("conv_eb", [dy, w], f"{b}.dx", xs,
                                  {"stride": n.attrs["stride"], "pad": n.attrs["pad"],
                                   "in_shape": xs}, n)
                else:
                    grad[x] = new("linear_eb", [dy, w], f"{b}.dx", V[x].shape, {}, n)
            pw = pvals[w]
            if n.op == "conv":
                new("conv_wg", [dy, x], f"grad:{pw.name}", V[w].shape,
                    {"stride": n.attrs["stride"], "pad": n.attrs["pad"],
                     "kernel": tuple(V[w].shape[2:])}, n)
            else:
                new("linear_wg", [dy, x], f"grad:{pw.name}", V[w].shape, {}, n)
            g.outputs[f"grad:{pw.name}"] = f"grad:{pw.name}"
            if len(n.inputs) == 3:
                pb = pvals[n.inputs[2]]
                new("bias_grad", [dy], f"grad:{pb.name}", V[n.inputs[2]].shape, {}, n)
                g.outputs[f"grad:{pb.name}"] = f"grad:{pb.name}"
        elif x not in needs:
            continue
        elif n.op == "relu":
            grad[x] = new("relu_bwd", [dy, o], f"{b}.dx", V[x].shape, {}, n)
        elif n.op == "maxpool":
            grad[x] = new("maxpool_bwd", [dy, x], f"{b}.dx", V[x].shape, dict(n.attrs), n)
        elif n.op == "reshape":
            xs = V[x].shape
            grad[x] = new("reshape", [dy], f"{b}.dx", xs, {"shape": xs}, n)
        else:
            raise EdgecError(f"internal error: no backward for op {n.op}")
    for p in g.params.values():
        if f"grad:{p.name}" not in g.outputs:
            p.trainable = False
            g.meta.setdefault("unused_params", []).append(p.name)
    return g
