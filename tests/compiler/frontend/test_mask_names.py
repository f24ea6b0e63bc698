"""Every module name torch allows round-trips through the mask file: `edgec mask` writes
it (plain, or double-quoted with JSON escapes) and the parser reads back the same name;
files written before keep their meaning."""
import pytest
import torch
from torch import nn

from edgec.compiler.mask.derive import derive_mask, format_mask
from edgec.compiler.frontend.load import load_model
from edgec.compiler.mask import file as maskfile
from edgec.compiler.mask.file import parse_mask
from edgec.compiler.workflows.cli import main
from edgec.isa.errors import EdgecError

# torch refuses only '' and names containing '.' for one module (add_module); the dotted
# full names of named_modules() join such parts
ODD = ["block4-1", "1-0", "-x", "a-", "a b", "x:y", "a#b", "a,b", 'q"t', "b\\s", "n\nl",
       "t\tab", "\r", "é", "\u2028", "\x85z", "\x00", "😀", "0", "_", "__x"]


def _tree():
    """A model whose named_modules() holds each odd part, alone and in dotted paths."""
    root = nn.Module()
    for i, part in enumerate(ODD):
        holder = nn.Module()
        holder.add_module(part, nn.Linear(2, 3 + i % 3))
        root.add_module(part, holder)
    return root


def test_odd_module_names_round_trip():
    names = {n: m.out_features for n, m in _tree().named_modules() if isinstance(m, nn.Linear)}
    assert "block4-1.block4-1" in names and 'q"t.q"t' in names
    kept = {n: [0, c - 1] for n, c in names.items()}
    text = "# header\n" + "\n".join(maskfile.mask_line(n, k) for n, k in kept.items()) + "\n"
    assert text.count("\n") == len(names) + 1             # one line each: newlines escaped
    assert parse_mask("m.mask", names, None, text=text) == kept


def test_plain_names_stay_plain_and_old_files_read_the_same():
    for n in ("conv1", "features.3", "0", "layer1.0.conv2", "trunk_output.block4.block4-1.f.b.0",
              "stem.0", "s1.b1-0.conv"):
        assert maskfile.mask_name(n) == n
    layers = {"conv1": 8, "features.3": 4, "0": 4, "a b": 4}
    old = "conv1: 0-5, 8-2\n"
    with pytest.raises(EdgecError, match="empty range"):      # still a range, not a name
        parse_mask("m.mask", layers, None, text=old)
    assert parse_mask("m.mask", layers, None, text="0: 0-1 3\nfeatures.3:1\n") == {
        "0": [0, 1, 3], "features.3": [1]}
    assert parse_mask("m.mask", layers, None, text='"conv1": 1\n"a b": 2-3') == {
        "conv1": [1], "a b": [2, 3]}


@pytest.mark.parametrize("text,where,what", [
    ('"a\\q": 1', "m.mask:1:3:", "bad quoted layer name: Invalid \\escape"),
    ('"a\tb": 1', "m.mask:1:3:", "bad quoted layer name: Invalid control character"),
    ("1-0: 1", "m.mask:1:2:", "unexpected '-', expected ':'; a layer name with other"),
    ('"nope": 1', "m.mask:1:1:", "unknown layer 'nope'"),
])
def test_bad_names_are_located(text, where, what):
    with pytest.raises(EdgecError) as e:
        parse_mask("m.mask", {"a b": 3}, None, text=text)
    msg = str(e.value)
    assert msg.startswith(where) and what in msg and "\n" not in msg, msg


REGNET = """
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                               nn.ReLU())

    def forward(self, x):
        return self.f(x)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.trunk = nn.Sequential()
        self.trunk.add_module("block1-0", Block(6))
        self.trunk.add_module("block 1:1", Block(6))
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = self.trunk(torch.relu(self.stem(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


torch.manual_seed(0)
model = Net()
example_input = torch.randn(2, 3, 6, 6)
"""


def test_edgec_mask_output_compiles(tmp_path):
    """`edgec mask` on RegNet-style names ('block1-0') and worse ('block 1:1'): the file it
    writes is a valid --mask for compile, naming the same layers."""
    p = tmp_path / "model.py"
    p.write_text(REGNET)
    out = tmp_path / "m.mask"
    assert main(["mask", str(p), "--keep", "0.5", "-o", str(out)]) == 0
    text = out.read_text()
    assert "trunk.block1-0.f.0: " in text and '"trunk.block 1:1.f.0": ' in text, text
    assert main(["compile", str(p), "--mask", str(out), "-q", "-o",
                 str(tmp_path / "p.bin")]) == 0
    model, x = load_model(str(p))
    m = derive_mask(model, x, str(p), 0.5, "l1")
    assert format_mask(m, "h").count("\n") == 4 and set(m) == {
        "stem", "trunk.block1-0.f.0", "trunk.block 1:1.f.0"}
