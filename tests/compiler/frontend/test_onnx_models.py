"""ONNX in, for what torch.onnx (TorchScript exporter) emits for real backbones: BatchNorm,
residual adds, depthwise convs, ReLU6, average pools, the shape arithmetic of a reshape,
Identity chains of shared initializers.  Each exported model compiles, verifies bit for bit
(reference vs emulator), its float gradients equal PyTorch autograd of the original module,
and where the PyTorch frontend takes the same model, the program is the one model.py gives
(the same code and data; only the source locations in the metadata differ)."""
import sys
import types

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgec.compiler.driver import compile_model, compile_module
from edgec.compiler.frontend.capture import float_values
from edgec.compiler.frontend.onnx_in import load_onnx
from edgec.compiler.ir.float_interp import run_float
from edgec.compiler.workflows.verify import verify
from edgec.isa.errors import EdgecError
from edgec.isa.target import load_target

pytest.importorskip("onnxruntime")


def _random_bn(model: nn.Module) -> nn.Module:
    """BatchNorm statistics and affine parameters away from their defaults (1 and 0), so
    that no two initializers coincide (torch.onnx shares equal ones through Identity)."""
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            C = m.num_features
            m.running_mean.copy_(torch.rand(C, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(C, generator=g) * 1.5 + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(C, generator=g) + 0.5)
                m.bias.copy_(torch.rand(C, generator=g) * 0.6 - 0.3)
    return model.eval()


class ResBlock(nn.Module):
    """ResNet style: conv-BN-ReLU stem, a basic block with identity shortcut, a downsampling
    block with a conv-BN shortcut, GAP, fc."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv3, self.bn3 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv4 = nn.Conv2d(8, 12, 3, stride=2, padding=1, bias=False)
        self.bn4 = nn.BatchNorm2d(12)
        self.down = nn.Sequential(nn.Conv2d(8, 12, 1, stride=2, bias=False), nn.BatchNorm2d(12))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(y)) + x)
        x = torch.relu(self.bn4(self.conv4(x)) + self.down(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class MobileBlock(nn.Module):
    """MobileNetV2 style: inverted residual (1x1 expand, depthwise 3x3, 1x1 project, each
    with BN, ReLU6 between), a stride-2 depthwise block, GAP, Dropout, a classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(8), nn.ReLU6())
        self.expand = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16),
                                    nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False),
                                nn.BatchNorm2d(16), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.dw2 = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8,
                                           bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(8, 4))

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(self.dw(self.expand(x)))
        x = self.pool(self.dw2(x))
        return self.classifier(torch.flatten(x, 1))


class MeanHead(nn.Module):
    """x.mean((2, 3)) over H, W as the head (ReduceMean keepdims=0), an average pool with
    padding, a conv with bias feeding its BN, and x.view(x.size(0), -1) (the Shape /
    Gather / Unsqueeze / Concat chain of a Reshape's target shape)."""

    def __init__(self, keepdim=False):
        super().__init__()
        self.keepdim = keepdim
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = F.relu6(self.bn(self.conv(x)))
        x = torch.relu(self.conv2(self.pool(x)))
        x = x.mean((2, 3), keepdim=self.keepdim)
        return self.fc(x.view(x.size(0), -1))


MODELS = {"resblock": (ResBlock, (2, 3, 8, 8)), "mobile": (MobileBlock, (2, 3, 8, 8)),
          "mean": (MeanHead, (2, 3, 7, 7)),
          "mean-keepdim": (lambda: MeanHead(keepdim=True), (2, 3, 7, 7))}
# the PyTorch frontend does not take the backward of x.mean(dims) without keepdim (aten's
# unsqueeze of the error), so that model has no model.py program to compare with
SAME_AS_PY = ("resblock", "mobile", "mean-keepdim")


def _model(name):
    cls, shape = MODELS[name]
    torch.manual_seed(0)
    m = _random_bn(cls())
    return m, torch.randn(*shape, generator=torch.Generator().manual_seed(1))


def _export(model, x, path, opset, **kw):
    try:
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["logits"], **kw)
    except Exception as e:  # noqa: BLE001 - exporter unavailable
        pytest.skip(f"torch.onnx.export failed: {type(e).__name__}: {e}")
    np.savez(str(path) + ".npz", x=x.numpy())
    return str(path)


def _op_types(path):
    return {n.op_type for n in onnx.load(path).graph.node}


def _torch_grads(model, x):
    """PyTorch float autograd of the original module: mean cross-entropy, labels n % K."""
    model.zero_grad()
    z = model(x)
    labels = torch.arange(x.shape[0]) % z.shape[1]
    F.cross_entropy(z, labels).backward()
    return labels, {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _grads_match_torch(model, x, path):
    """The ONNX graph's float gradients (compiler/ir/float_interp.py) against PyTorch
    autograd of the module the model was exported from."""
    net, _, g = load_onnx(path)
    labels, want = _torch_grads(model, x)
    got = run_float(g, x, labels, float_values(g, net))
    assert {k for k in g.outputs if k.startswith("grad:")} == {f"grad:{n}" for n in want}
    for n, w in want.items():
        v = got[g.outputs[f"grad:{n}"]].reshape(w.shape).double()
        cos = torch.nn.functional.cosine_similarity(v.flatten(), w.double().flatten(), dim=0)
        assert cos > 0.99999, (n, float(cos))
        torch.testing.assert_close(v, w.double(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(net(x), model(x), rtol=1e-5, atol=1e-5)


def _same_program(a, b):
    """The same code and data; the metadata differs only in the source locations."""
    assert a.program.code == b.program.code
    assert a.program.data == b.program.data
    ma = {k: v for k, v in a.program.meta.items() if k != "origin"}
    mb = {k: v for k, v in b.program.meta.items() if k != "origin"}
    assert ma == mb


_PY: dict = {}


def _py_program(name, model, x):
    if name not in _PY:
        _PY[name] = compile_module(model, x, f"{name}.py", None, load_target(None))
    return _PY[name]


@pytest.mark.parametrize("opset", [13, pytest.param(17, marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", list(MODELS))
def test_exported_backbone_blocks(name, opset, tmp_path):
    model, x = _model(name)
    path = _export(model, x, tmp_path / f"{name}.onnx", opset, do_constant_folding=False)
    ops = _op_types(path)
    assert "BatchNormalization" in ops
    if name.startswith("mean"):
        assert {"ReduceMean", "AveragePool", "Unsqueeze", "Concat", "Cast"} <= ops
    else:
        assert {"Add", "GlobalAveragePool"} <= ops
    _grads_match_torch(model, x, path)
    c = compile_model(path, calib=path + ".npz")
    assert set(c.graph.params) >= {n for n, _ in model.named_parameters()}
    rep = verify(c)
    assert rep.bit_exact, rep.mismatches[:3]
    assert len(rep.fidelity) == len(list(model.parameters()))
    if name in SAME_AS_PY:
        _same_program(c, _py_program(name, model, x))


def test_exporter_folded_batchnorm(tmp_path):
    """torch.onnx's default export folds each BatchNorm into the conv before it (weights
    renamed ``onnx::Conv_<n>``): a conv with bias, named after the module it ran in, so
    a user.mask written for model.py still names it; the program is then that of the
    folded model (no BatchNorm ops), not model.py's."""
    model, x = _model("resblock")
    path = _export(model, x, tmp_path / "folded.onnx", 17)
    assert "BatchNormalization" not in _op_types(path)
    net, _, g = load_onnx(path)
    assert {"conv1.weight", "conv1.bias", "down.0.weight", "down.0.bias"} <= set(g.params)
    assert not any(p.is_const for p in g.params.values() if p.kind.startswith("bn"))
    torch.testing.assert_close(net(x), model(x), rtol=1e-4, atol=1e-5)
    _, want = _torch_grads(net, x)
    labels = torch.arange(x.shape[0]) % 5
    got = run_float(g, x, labels, float_values(g, net))
    for n, w in want.items():
        torch.testing.assert_close(got[g.outputs[f"grad:{n}"]], w, rtol=1e-4, atol=1e-6)
    c = compile_model(path, {"conv2": [0, 1, 2, 5]}, calib=path + ".npz")
    assert verify(c).bit_exact


def test_import_opset17_graph_equals_opset13(tmp_path):
    """The same graph from either opset (cheap: no compile)."""
    for name in MODELS:
        model, x = _model(name)
        graphs = []
        for o in (13, 17):
            p = _export(model, x, tmp_path / f"{name}-{o}.onnx", o, do_constant_folding=False)
            g = load_onnx(p)[2]
            graphs.append([(n.op, n.inputs, n.outputs, n.attrs, n.layer) for n in g.nodes])
        assert graphs[0] == graphs[1], name
        _grads_match_torch(model, x, p)


def _shape_chain_model(tmp_path):
    """Conv -> Reshape to (N, -1) whose target shape is computed from the activation:
    Shape, Gather, Unsqueeze, Slice, Concat, Cast, Mul, Identity, Constant (value_ints)."""
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(4, 2, 3, 3, generator=g), torch.randn(4, generator=g)
    fw = torch.randn(3, 4 * 5 * 5, generator=g)
    i64 = lambda name, v: nh.from_array(np.asarray(v, dtype=np.int64), name)  # noqa: E731
    nodes = [
        h.make_node("Conv", ["x", "c.weight", "c.bias"], ["y"], name="/c/Conv", pads=[1] * 4),
        h.make_node("Shape", ["y"], ["s"], name="/Shape"),
        h.make_node("Gather", ["s", "zero"], ["n"], name="/Gather", axis=0),
        h.make_node("Unsqueeze", ["n", "ax0"], ["n1"], name="/Unsqueeze"),
        h.make_node("Slice", ["s", "one", "big"], ["chw"], name="/Slice"),
        h.make_node("Constant", [], ["neg"], name="/Constant", value_ints=[-1]),
        h.make_node("Cast", ["neg"], ["negc"], name="/Cast", to=T.INT64),
        h.make_node("Mul", ["negc", "one"], ["neg1"], name="/Mul"),
        h.make_node("Concat", ["n1", "neg1"], ["shape"], name="/Concat", axis=0),
        h.make_node("Identity", ["fc.w0"], ["fc.weight"], name="Identity_0"),
        h.make_node("Reshape", ["y", "shape"], ["f"], name="/Reshape"),
        h.make_node("Gemm", ["f", "fc.weight"], ["z"], name="/fc/Gemm", transB=1),
    ]
    inits = [nh.from_array(w.numpy(), "c.weight"), nh.from_array(b.numpy(), "c.bias"),
             nh.from_array(fw.numpy(), "fc.w0"), i64("zero", 0), i64("ax0", [0]),
             i64("one", [1]), i64("big", [1 << 62])]
    gr = h.make_graph(nodes, "chain", [h.make_tensor_value_info("x", T.FLOAT, [2, 2, 5, 5])],
                      [h.make_tensor_value_info("z", T.FLOAT, [2, 3])], initializer=inits)
    p = str(tmp_path / "chain.onnx")
    onnx.save(h.make_model(gr, opset_imports=[h.make_opsetid("", 13)]), p)
    return p, w, b, fw


def test_folds_shape_arithmetic(tmp_path):
    p, w, b, fw = _shape_chain_model(tmp_path)
    net, ex, g = load_onnx(p)
    assert [n.op for n in g.nodes if n.layer != "loss" and "grad" not in n.outputs[0]][:3] \
        == ["conv", "reshape", "linear"]
    assert g.params["fc.weight"].shape == (3, 100)
    want = F.conv2d(ex, w, b, padding=1).reshape(2, -1) @ fw.T
    torch.testing.assert_close(net(ex), want)
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(p, providers=["CPUExecutionProvider"])
    torch.testing.assert_close(torch.from_numpy(sess.run(None, {"x": ex.numpy()})[0]), want,
                               rtol=1e-5, atol=1e-5)


def test_shared_initializers_through_identity(tmp_path):
    """Fresh BatchNorms (weight = running_var = 1, bias = running_mean = 0): torch.onnx
    keeps one initializer of each value and makes the others ``Identity`` of it."""
    torch.manual_seed(0)
    model = MobileBlock().eval()
    x = torch.randn(2, 3, 8, 8)
    path = _export(model, x, tmp_path / "fresh.onnx", 13, do_constant_folding=False)
    m = onnx.load(path)
    inits = {t.name for t in m.graph.initializer}
    ids = [n for n in m.graph.node if n.op_type == "Identity" and n.input[0] in inits]
    assert len(ids) >= 4 and "dw.1.weight" not in inits
    _grads_match_torch(model, x, path)
    c = compile_model(path, calib=path + ".npz")
    _same_program(c, compile_module(model, x, "fresh.py", None, load_target(None)))


class _Unsupported(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(8 * 6 * 6 if how == "cat" else 4 * 6 * 6, 2)

    def forward(self, x):
        y = self.conv(x)
        if self.how == "cat":
            y = torch.cat([y, torch.relu(y)], 1)
        elif self.how == "mul":
            y = y * torch.sigmoid(y)
        elif self.how == "hardswish":
            y = F.hardswish(y)
        elif self.how == "scale":
            y = y * 2.0
        elif self.how == "permute":
            y = y.permute(0, 2, 3, 1).contiguous()
        return self.fc(torch.flatten(y, 1))


@pytest.mark.parametrize("how,op", [("cat", "Concat"), ("mul", "Sigmoid"),
                                    ("hardswish", "HardSwish"), ("scale", "Mul"),
                                    ("permute", "Transpose")])
def test_unsupported_ops_name_the_node(how, op, tmp_path):
    model = _Unsupported(how).eval()
    x = torch.randn(1, 3, 6, 6)
    path = _export(model, x, tmp_path / f"{how}.onnx", 17)
    with pytest.raises(EdgecError, match=rf"^{how}\.onnx:node \d+ \([^)]*\): unsupported "
                                         rf"(op '{op}'|{op}: .*); edgec supports Conv"):
        compile_model(path, calib=path + ".npz")


@pytest.mark.slow
def test_torchvision_resnet18(tmp_path):
    """A real backbone, BatchNorm kept: the same program as the PyTorch frontend's."""
    sys.modules.setdefault("torchvision._meta_registrations",
                           types.ModuleType("torchvision._meta_registrations"))
    tm = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    model = _random_bn(tm.resnet18(num_classes=10))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    path = _export(model, x, tmp_path / "resnet18.onnx", 17, do_constant_folding=False)
    c = compile_model(path, calib=path + ".npz")
    _same_program(c, compile_module(model, x, "resnet18.py", None, load_target(None)))


class _CeilClamp(nn.Module):
    def __init__(self, hw):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.fc = nn.Linear(3 * ((hw + 1) // 2) ** 2, 2)

    def forward(self, x):
        x = self.pool(torch.clamp(self.conv(x), min=0.0))
        return self.fc(torch.flatten(x, 1))


def test_ceil_mode_where_it_equals_floor_mode_and_clip_min_only(tmp_path):
    torch.manual_seed(0)
    model, x = _CeilClamp(6).eval(), torch.randn(2, 2, 6, 6)
    path = _export(model, x, tmp_path / "ceil.onnx", 13)
    assert {"Clip", "MaxPool"} <= _op_types(path)
    g = load_onnx(path)[2]
    assert [n.op for n in g.nodes][:3] == ["conv", "relu", "maxpool"]
    _grads_match_torch(model, x, path)
    odd, xo = _CeilClamp(7).eval(), torch.randn(2, 2, 7, 7)
    path = _export(odd, xo, tmp_path / "ceil7.onnx", 13)
    with pytest.raises(EdgecError, match=r"ceil7\.onnx:node \d+ \(/pool/MaxPool\): .*"
                                         r"ceil_mode=1 on a 7x7 input"):
        load_onnx(path)
