"""Frontend: load model.py, capture the joint training graph, float interpreter."""
import textwrap

import pytest
import torch
import torch.nn.functional as F

from edgec.compiler.frontend.capture import capture
from edgec.compiler.frontend.load import load_model
from edgec.compiler.ir.float_interp import run_float
from edgec.compiler.ir.graph import OPS
from edgec.isa.errors import EdgecError

HEADER = "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n"


def write(tmp_path, body, name="model.py"):
    p = tmp_path / name
    p.write_text(HEADER + textwrap.dedent(body))
    return str(p)


def line_of(path, needle):
    for i, l in enumerate(open(path).read().splitlines(), 1):
        if needle in l:
            return i
    raise AssertionError(needle)


MODELS = {
    "conv_relu_pool_linear": """
        torch.manual_seed(0)
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
                self.pool = nn.MaxPool2d(2)
                self.fc = nn.Linear(4 * 4 * 4, 5)
            def forward(self, x):
                x = F.relu(self.conv1(x))
                x = self.pool(x)
                x = torch.flatten(x, 1)
                return self.fc(x)
        model = Net()
        example_input = torch.randn(3, 2, 8, 8)
    """,
    "conv_stride2_pad": """
        torch.manual_seed(1)
        model = nn.Sequential(
            nn.Conv2d(1, 3, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 0)),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 3 * 2, 6),
        )
        example_input = torch.randn(2, 1, 9, 5)
    """,
    "mlp": """
        torch.manual_seed(2)
        class MLP(nn.Module):
            def __init__(self):
                super().__init__()
                self.l1 = nn.Linear(7, 16)
                self.l2 = nn.Linear(16, 8, bias=False)
                self.out = nn.Linear(8, 4)
            def forward(self, x):
                x = torch.relu(self.l1(x))
                x = F.relu(self.l2(x))
                return self.out(x)
        model = MLP()
        example_input = torch.randn(5, 7)
    """,
    "conv_nobias_inplace_view": """
        torch.manual_seed(3)
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.c = nn.Conv2d(2, 4, 3, bias=False)
                self.act = nn.ReLU(inplace=True)
                self.fc = nn.Linear(4 * 4 * 4, 3, bias=False)
            def forward(self, x):
                x = self.act(self.c(x))
                x = x.view(x.size(0), -1)
                return self.fc(x)
        model = Net()
        example_input = torch.randn(2, 2, 6, 6)
    """,
    "relu_after_pool_padded_pool": """
        torch.manual_seed(4)
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
                self.pool1 = nn.MaxPool2d(3, stride=2, padding=1)
                self.relu1 = nn.ReLU()
                self.conv2 = nn.Conv2d(4, 4, 3)
                self.fc = nn.Linear(4 * 2 * 2, 5)
            def forward(self, x):
                x = self.relu1(self.pool1(self.conv1(x)))
                x = self.conv2(x)
                return self.fc(x.reshape(x.shape[0], -1))
        model = Net()
        example_input = torch.randn(4, 1, 8, 8)
    """,
    "conv_stride_floor": """
        torch.manual_seed(5)
        model = nn.Sequential(
            nn.Conv2d(2, 3, 3, stride=2),
            nn.MaxPool2d(2, stride=1),
            nn.Conv2d(3, 4, 2, stride=2, bias=False),
            nn.Flatten(),
            nn.Linear(4, 3),
        )
        example_input = torch.randn(2, 2, 8, 8)
    """,
}


def reference(model, x, labels):
    model.zero_grad()
    z = model(x)
    F.cross_entropy(z, labels).backward()
    return z.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_capture_matches_autograd(tmp_path, name):
    path = write(tmp_path, MODELS[name])
    model, x = load_model(path)
    g = capture(model, x, path)
    g.verify()
    n = x.shape[0]
    K = model(x).shape[1]
    labels = torch.arange(n) % K
    env = run_float(g, x, labels, {k: p.detach() for k, p in model.named_parameters()})
    z, grads = reference(model, x, labels)
    assert torch.allclose(env[g.outputs["logits"]], z, atol=1e-5)
    assert set(g.outputs) == {"logits"} | {f"grad:{k}" for k in grads}
    for k, gr in grads.items():
        got = env[g.outputs[f"grad:{k}"]]
        assert got.shape == gr.shape
        assert torch.allclose(got, gr, atol=1e-5), k
    # structure
    assert g.inputs == ["x", "labels"]
    assert g.values["x"].shape == tuple(x.shape) and g.values["labels"].dtype == "i32"
    assert g.values["labels"].shape == (n,)
    for k, p in model.named_parameters():
        P = g.params[k]
        assert P.value == f"param:{k}" and P.shape == tuple(p.shape)
        assert P.module == k.rpartition(".")[0] and P.kind == k.rpartition(".")[2]
    for node in g.nodes:
        assert node.op in OPS and node.op not in ("wview", "sgd")
        assert node.layer, node
        assert node.loc and node.loc.startswith("model.py:"), node


def test_names_attrs_layers_and_locs(tmp_path):
    path = write(tmp_path, MODELS["conv_relu_pool_linear"])
    model, x = load_model(path)
    g = capture(model, x, path)
    ops = [(n.op, n.inputs, n.outputs) for n in g.nodes]
    relu_line = line_of(path, "F.relu(self.conv1(x))")
    by_out = {n.outputs[0]: n for n in g.nodes}
    conv = by_out["conv1.out"]
    assert conv.op == "conv" and conv.attrs == {"stride": (1, 1), "pad": (1, 1)}
    assert conv.layer == "conv1" and conv.loc == f"model.py:{relu_line}"
    assert by_out["relu.out"].op == "relu" and by_out["relu.out"].layer == "forward"
    pool = by_out["pool.out"]
    assert pool.attrs == {"kernel": (2, 2), "stride": (2, 2), "pad": (0, 0)}
    assert pool.loc == f"model.py:{line_of(path, 'self.pool(x)')}"
    assert by_out["flatten.out"].attrs == {"shape": (3, 64)}
    assert g.outputs["logits"] == "fc.out"
    assert ("loss_grad", ["fc.out", "labels"], ["loss.dz"]) in ops
    assert ("linear_eb", ["loss.dz", "param:fc.weight"], ["fc.dx"]) in ops
    assert ("linear_wg", ["loss.dz", "flatten.out"], ["grad:fc.weight"]) in ops
    assert ("bias_grad", ["loss.dz"], ["grad:fc.bias"]) in ops
    # relu_bwd takes relu's output, maxpool_bwd takes maxpool's input
    assert ("maxpool_bwd", ["flatten.dx", "relu.out"], ["pool.dx"]) in ops
    assert ("relu_bwd", ["pool.dx", "relu.out"], ["relu.dx"]) in ops
    wg = by_out["grad:conv1.weight"]
    assert wg.op == "conv_wg" and wg.inputs == ["relu.dx", "x"]
    assert wg.attrs == {"stride": (1, 1), "pad": (1, 1), "kernel": (3, 3)}
    assert wg.layer == "conv1" and wg.loc == conv.loc
    # the input's gradient is never computed
    assert not any(n.op == "conv_eb" for n in g.nodes)
    # deterministic
    g2 = capture(model, x, path)
    assert [(n.op, n.inputs, n.outputs, n.attrs, n.layer, n.loc) for n in g2.nodes] == \
        [(n.op, n.inputs, n.outputs, n.attrs, n.layer, n.loc) for n in g.nodes]


def test_conv_eb_attrs(tmp_path):
    path = write(tmp_path, MODELS["conv_stride2_pad"])
    model, x = load_model(path)
    g = capture(model, x, path)
    eb = [n for n in g.nodes if n.op == "conv_eb"]
    assert len(eb) == 1
    assert eb[0].inputs == ["3.dx", "param:2.weight"] and eb[0].outputs == ["2.dx"]
    assert eb[0].attrs == {"stride": (2, 1), "pad": (1, 0), "in_shape": (2, 3, 5, 3)}
    # nn.Sequential children: loc is the line constructing the module
    assert eb[0].loc == f"model.py:{line_of(path, 'nn.Conv2d(3, 4')}"
    assert eb[0].layer == "2"


@pytest.mark.parametrize("layer,op,detail", [
    ("nn.Sigmoid()", "sigmoid", ""),
    ("nn.AvgPool2d(3, 2, ceil_mode=True)", "avgpool", "ceil_mode"),
    ("nn.InstanceNorm2d(4)", "instancenorm2d", ""),
    ("nn.ConvTranspose2d(4, 4, 3, padding=1)", "convtranspose2d", ""),
    ("nn.Conv2d(4, 4, 3, padding=2, dilation=2)", "conv", "dilation"),
    ("nn.MaxPool2d(3, 2, ceil_mode=True)", "maxpool", "ceil_mode"),
])
def test_unsupported_op_names_op_and_line(tmp_path, layer, op, detail):
    path = write(tmp_path, f"""
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
                self.act = {layer}
                self.fc = nn.LazyLinear(3)
            def forward(self, x):
                x = self.conv1(x)
                x = self.act(x)
                return self.fc(torch.flatten(x, 1))
        model = Net()
        example_input = torch.randn(2, 1, 8, 8)
        model(example_input)
    """)
    model, x = load_model(path)
    with pytest.raises(EdgecError) as ei:
        capture(model, x, path)
    msg = str(ei.value)
    assert f"unsupported op '{op}'" in msg and "'act'" in msg and detail in msg
    # the forward line, or (BatchNorm fails while tracing) the construction line
    lines = {line_of(path, "x = self.act(x)"), line_of(path, "self.act = ")}
    assert any(msg.startswith(f"model.py:{ln}:") for ln in lines), msg
    if op == "sigmoid":
        assert msg.startswith(f"model.py:{line_of(path, 'x = self.act(x)')}: ")
    assert "\n" not in msg


def test_functional_unsupported_and_bad_output(tmp_path):
    path = write(tmp_path, """
        model = nn.Sequential(nn.Linear(4, 3))
        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.l = nn.Linear(4, 3)
            def forward(self, x):
                return torch.tanh(self.l(x))
        model = M()
        example_input = torch.randn(2, 4)
    """)
    model, x = load_model(path)
    with pytest.raises(EdgecError, match=rf"^model.py:{line_of(path, 'torch.tanh')}: "
                                         r"unsupported op 'tanh' \(layer 'forward'\)"):
        capture(model, x, path)
    path = write(tmp_path, """
        model = nn.Conv2d(1, 2, 3)
        example_input = torch.randn(2, 1, 5, 5)
    """, "bad.py")
    model, x = load_model(path)
    with pytest.raises(EdgecError, match=r"logits of shape \(N, K\)"):
        capture(model, x, path)


def test_error_in_forward_has_line(tmp_path):
    path = write(tmp_path, """
        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.l = nn.Linear(4, 3)
            def forward(self, x):
                return self.l(x[:, :2])
        model = M()
        example_input = torch.randn(2, 4)
    """)
    model, x = load_model(path)
    with pytest.raises(EdgecError, match=rf"^model.py:{line_of(path, 'x[:, :2]')}: "):
        capture(model, x, path)


@pytest.mark.parametrize("cond", ["x.sum() > 0", "x.max().item() > 0", "x.tolist()[0][0] > 0",
                                  "bool((x > 0).any())"])
def test_data_dependent_control_flow_is_named(tmp_path, cond):
    path = write(tmp_path, f"""
        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.l = nn.Linear(4, 3)
            def forward(self, x):
                if {cond}:
                    x = x * 2
                return self.l(x)
        model = M()
        example_input = torch.randn(2, 4)
    """)
    model, x = load_model(path)
    with pytest.raises(EdgecError) as e:
        capture(model, x, path)
    msg = str(e.value)
    assert msg.startswith(f"data-dependent control flow at model.py:{line_of(path, cond)} is "
                          "not supported: "), msg
    assert "constructor argument" in msg and "Guard" not in msg and "\n" not in msg, msg


def test_load_model_errors(tmp_path):
    with pytest.raises(EdgecError, match="no such file"):
        load_model(str(tmp_path / "nope.py"))
    p = tmp_path / "syn.py"
    p.write_text("import torch\nmodel = (1,\nx = 3 3\n")
    with pytest.raises(EdgecError, match=r"syn.py:\d+:\d+: syntax error"):
        load_model(str(p))
    p.write_text("import torch\n\ndef f():\n    raise ValueError('boom')\nf()\n")
    with pytest.raises(EdgecError, match=r"syn.py:4: error while executing.*ValueError: boom"):
        load_model(str(p))
    p.write_text("import torch\nexample_input = torch.zeros(1, 2)\n")
    with pytest.raises(EdgecError, match=r"syn.py: does not define `model`"):
        load_model(str(p))
    p.write_text("import torch\nmodel = 3\nexample_input = torch.zeros(1, 2)\n")
    with pytest.raises(EdgecError, match=r"`model` must be a torch.nn.Module, got int"):
        load_model(str(p))
    p.write_text("import torch\nmodel = torch.nn.Linear(2, 2)\n")
    with pytest.raises(EdgecError, match=r"does not define `example_input`"):
        load_model(str(p))
    p.write_text("import torch\nmodel = torch.nn.Linear(2, 2)\nexample_input = torch.zeros(2, 2, dtype=torch.long)\n")
    with pytest.raises(EdgecError, match=r"floating-point"):
        load_model(str(p))
    p.write_text("import torch\nmodel = torch.nn.Linear(2, 2)\nexample_input = torch.zeros(2, 2, 2)\n")
    with pytest.raises(EdgecError, match=r"\(N, C, H, W\) or \(N, F\)"):
        load_model(str(p))
    p.write_text("import torch\nmodel = torch.nn.Linear(2, 2)\nexample_input = torch.zeros(3, 2)\n")
    m, x = load_model(str(p))
    assert isinstance(m, torch.nn.Linear) and x.shape == (3, 2)


def test_float_interp_wview_and_sgd():
    from edgec.compiler.ir.graph import Graph, Param
    g = Graph()
    g.inputs = ["x", "labels"]
    g.add_value("x", (1, 2))
    g.add_value("labels", (1,), "i32")
    g.params["fc.weight"] = Param("fc.weight", "param:fc.weight", (3, 4), "fc", "weight")
    g.add_value("param:fc.weight", (3, 4))
    g.add_value("w.v", (2, 2))
    g.add_value("g", (2, 2))
    attrs = {"out_idx": [0, 2], "in_idx": [1], "in_block": 2}
    g.add_node("wview", ["param:fc.weight"], ["w.v"], attrs)
    g.add_node("wview", ["param:fc.weight"], ["g"], attrs)
    g.add_node("sgd", ["param:fc.weight", "g"], ["param:fc.weight"], dict(attrs, lr=0.5))
    g.verify()
    w = torch.arange(12.0).reshape(3, 4)
    env = run_float(g, torch.zeros(1, 2), torch.zeros(1), {"fc.weight": w})
    assert env["w.v"].tolist() == [[2.0, 3.0], [10.0, 11.0]]
    new = w.clone()
    new[0, 2:] *= 0.5
    new[2, 2:] *= 0.5
    assert torch.equal(env["param:fc.weight"], new)
    assert torch.equal(w, torch.arange(12.0).reshape(3, 4))    # input not mutated


def test_unused_module_is_frozen_and_shared_weights_rejected(tmp_path):
    path = write(tmp_path, """
        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.l = nn.Linear(4, 3)
                self.spare = nn.Linear(4, 3)
            def forward(self, x):
                return self.l(x)
        model = M()
        example_input = torch.randn(2, 4)
    """)
    model, x = load_model(path)
    g = capture(model, x, path)
    assert not g.params["spare.weight"].trainable and not g.params["spare.bias"].trainable
    assert g.params["l.weight"].trainable
    assert set(g.outputs) == {"logits", "grad:l.weight", "grad:l.bias"}
    path = write(tmp_path, """
        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.l = nn.Linear(4, 4)
            def forward(self, x):
                x = torch.relu(self.l(x))
                return self.l(x)
        model = M()
        example_input = torch.randn(2, 4)
    """, "shared.py")
    model, x = load_model(path)
    with pytest.raises(EdgecError, match=rf"^shared.py:{line_of(path, 'return self.l(x)')}: "
                                         r"parameter 'l.weight' is used by more than one op"):
        capture(model, x, path)
