"""edgec mask: deriving a user.mask from the weights (l1 / bn-gamma, per layer / global)."""
import math
import textwrap

import numpy as np
import pytest

from edgec.compiler.workflows.cli import main
from edgec.compiler.driver import compile_model
from edgec.compiler.mask.layers import mask_layers
from edgec.compiler.frontend import capture as capture_mod
from edgec.compiler.frontend.capture import capture
from edgec.compiler.mask.derive import derive_mask, format_mask
from edgec.compiler.frontend.load import load_model
from edgec.compiler.mask.file import parse_mask
from edgec.isa.errors import EdgecError

# stem conv1 -> bn1 -> relu -> depthwise dw ------------------+--> add -> relu -> pool
#                                 \-> conv2 -> bn2 -> relu -> conv3 -> bn3 /
# -> flatten -> fc1 (no BN) -> relu -> fc2 (logits)
SMALL = textwrap.dedent("""
    import torch
    from torch import nn

    class Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(8)
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.conv2 = nn.Conv2d(8, 12, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(12)
            self.conv3 = nn.Conv2d(12, 8, 3, padding=1, bias=False)
            self.bn3 = nn.BatchNorm2d(8)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc1 = nn.Linear(8, 16)
            self.fc2 = nn.Linear(16, 4)

        def forward(self, x):
            y = self.dw(torch.relu(self.bn1(self.conv1(x))))
            z = self.bn3(self.conv3(torch.relu(self.bn2(self.conv2(y)))))
            y = torch.relu(y + z)
            y = torch.flatten(self.pool(y), 1)
            return self.fc2(torch.relu(self.fc1(y)))

    torch.manual_seed(0)
    model = Small()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2, model.bn3):
            bn.weight.copy_(torch.randn(bn.num_features))
            bn.bias.copy_(0.1 * torch.randn(bn.num_features))
    model.eval()
    example_input = torch.randn(2, 3, 6, 6)
""")

GROUPED = textwrap.dedent("""
    import torch
    from torch import nn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.Conv2d(8, 6, 1),
                          nn.Flatten(), nn.Linear(6 * 4 * 4, 3))
    example_input = torch.randn(2, 3, 4, 4)
""")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    p = tmp_path_factory.mktemp("small") / "model.py"
    p.write_text(SMALL)
    model, x = load_model(str(p))
    g = capture(model, x, str(p))
    return str(p), model, x, g


def w_np(model, name):
    return model.get_submodule(name).weight.detach().numpy().astype(np.float64)


def l1(model, name):
    w = w_np(model, name)
    return np.abs(w.reshape(w.shape[0], -1)).sum(1)


def top(s, k):
    return sorted(np.argsort(-s, kind="stable")[:k].tolist())


def parse(path, model, text_path):
    layers, refuse = mask_layers(model)
    return parse_mask(text_path, layers, "fc2" if "fc2" in layers else None, refuse=refuse)


def test_l1_per_layer_groups_and_compile(small, tmp_path):
    path, model, x, g = small
    m = derive_mask(model, x, path, 0.5, "l1", graph=g)
    assert list(m) == ["conv1", "conv2", "conv3", "fc1"]      # fc2 (logits) never masked
    assert m["conv1"] == m["conv3"]                            # residual group
    for name, C in (("conv1", 8), ("conv2", 12), ("fc1", 16)):
        assert len(m[name]) == math.ceil(0.5 * C)
    assert m["conv2"] == top(l1(model, "conv2"), 6)
    assert m["fc1"] == top(l1(model, "fc1"), 8)
    s1, s3 = l1(model, "conv1"), l1(model, "conv3")
    assert m["conv1"] == top(s1 / s1.mean() + s3 / s3.mean(), 4)
    out = tmp_path / "user.mask"
    out.write_text(format_mask(m, "edgec mask --keep 0.5 --by l1: model.py"))
    assert parse(path, model, str(out)) == m
    c = compile_model(path, str(out))          # the compiler accepts it (residual rule)
    assert c.graph.meta["mask"] == m


def test_bn_gamma(small, capsys):
    path, model, x, g = small
    notes = []
    m = derive_mask(model, x, path, 0.25, "bn-gamma", note=notes.append, graph=g)
    g = lambda n: np.abs(w_np(model, n).reshape(-1))  # noqa: E731
    assert m["conv2"] == top(g("bn2"), 3)
    assert m["conv1"] == m["conv3"] == top(g("bn1") / g("bn1").mean()
                                           + g("bn3") / g("bn3").mean(), 2)
    assert m["fc1"] == top(l1(model, "fc1"), 4)               # no BN: falls back to l1
    assert len(notes) == 1 and "'fc1'" in notes[0] and "L1" in notes[0]


def test_global_budget(small):
    path, model, x, g = small
    m = derive_mask(model, x, path, 0.5, "l1", global_=True, graph=g)
    assert m["conv1"] == m["conv3"] and all(m.values())
    # units: group {conv1, conv3} (8 channels, counted once), conv2 (12), fc1 (16)
    assert len(m["conv1"]) + len(m["conv2"]) + len(m["fc1"]) == math.ceil(0.5 * 36)
    s1, s3 = l1(model, "conv1"), l1(model, "conv3")
    units = {"conv1": (s1 / s1.mean() + s3 / s3.mean()) / 2}
    for n in ("conv2", "fc1"):
        s = l1(model, n)
        units[n] = s / s.mean()
    kept = [units[n][c] for n in units for c in m[n]]
    dropped = [units[n][c] for n in units for c in range(len(units[n])) if c not in m[n]]
    forced = {n: units[n].argmax() for n in units}   # each unit's best channel is kept anyway
    kept_free = [units[n][c] for n in units for c in m[n] if c != forced[n]]
    assert min(kept_free) >= max(dropped) and max(kept) >= max(dropped)
    full = derive_mask(model, x, path, 1.0, "l1", global_=True, graph=g)
    assert full == {n: list(range(len(units[n if n != "conv3" else "conv1"])))
                    for n in ("conv1", "conv2", "conv3", "fc1")}


def test_grouped_conv_input_left_out(tmp_path):
    p = tmp_path / "model.py"
    p.write_text(GROUPED)
    model, x = load_model(str(p))
    notes = []
    m = derive_mask(model, x, str(p), 0.5, "l1", note=notes.append)
    assert list(m) == ["3"] and len(m["3"]) == 3                # "0" feeds groups=2
    assert any("'0'" in n and "grouped" in n for n in notes)


def test_cli_writes_and_prints(small, tmp_path, capsys, monkeypatch):
    path, model, x, g = small
    out = tmp_path / "u.mask"
    assert main(["mask", path, "--keep", "0.5", "--by", "l1", "-o", str(out)]) == 0
    text = out.read_text()
    assert text.splitlines()[0] == f"# edgec mask --keep 0.5 --by l1: {path}"
    assert parse(path, model, str(out)) == derive_mask(model, x, path, 0.5, "l1", graph=g)
    capsys.readouterr()
    # (the same graph again: skip the second capture, to keep the test fast)
    monkeypatch.setattr(capture_mod, "capture", lambda *a, **k: g)
    assert main(["mask", path, "--keep", "0.5"]) == 0
    assert capsys.readouterr().out == text
    assert main(["mask", path, "--keep", "0.5", "--by", "bn-gamma", "--global"]) == 0
    cap = capsys.readouterr()
    assert cap.out.startswith("# edgec mask --keep 0.5 --by bn-gamma --global: ")
    assert "'fc1'" in cap.err       # no BN after fc1: the l1 fallback note
    assert cap.out.splitlines()[1:] == format_mask(derive_mask(
        model, x, path, 0.5, "bn-gamma", True, note=lambda m: None, graph=g), "").splitlines()[1:]


@pytest.mark.parametrize("keep", ["0", "1.5", "-0.1", "nan"])
def test_cli_bad_keep(small, capsys, keep):
    assert main(["mask", small[0], "--keep", keep]) == 1     # refused before loading
    err = capsys.readouterr().err
    assert err.startswith("edgec: error: --keep") and err.count("\n") == 1


def test_cli_bad_model(tmp_path, capsys):
    p = tmp_path / "bad.py"
    p.write_text("model = 3\n")
    assert main(["mask", str(p), "--keep", "0.5"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("edgec: error: ") and err.count("\n") == 1
    with pytest.raises(EdgecError, match="--keep"):
        derive_mask(None, None, str(p), 0.0)


@pytest.mark.slow
def test_resnet18_mask_parses(tmp_path):
    path = "examples/resnet18/model.py"
    model, x = load_model(path)
    m = derive_mask(model, x, path, 0.5, "l1")
    layers, refuse = mask_layers(model)
    assert "fc" not in m and len(m) == len(layers) - 1
    stream2 = ["layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2"]
    assert all(m[n] == m[stream2[0]] for n in stream2)
    assert m["conv1"] == m["layer1.0.conv2"] == m["layer1.1.conv2"]
    assert all(len(m[n]) == math.ceil(0.5 * layers[n]) for n in m)
    f = tmp_path / "user.mask"
    f.write_text(format_mask(m, "edgec mask --keep 0.5 --by l1: model.py"))
    assert parse_mask(str(f), layers, "fc", refuse=refuse) == m
