"""One pass at a time, on the IR text: the graph printed before and after the prune pass and
the mask pass of examples/lenet.  The expectations are read off the model and its mask file
by hand (LeNet: conv1 8 -> pool -> conv2 16 -> pool -> flatten 64 -> fc1 32 -> fc2 10;
user.mask keeps conv1 0-5, conv2 0-3,6,8-11, fc1 0-19,24,26), not from the passes."""
import re
from pathlib import Path

import pytest

from edgec.compiler.frontend.capture import capture
from edgec.compiler.frontend.load import load_model
from edgec.compiler.ir.text import print_graph
from edgec.compiler.mask.layers import user_mask
from edgec.compiler.passes.mask import MaskPass
from edgec.compiler.passes.prune import PrunePass

ROOT = Path(__file__).resolve().parents[3]
MODEL = str(ROOT / "examples" / "lenet" / "model.py")
MASK = str(ROOT / "examples" / "lenet" / "user.mask")


@pytest.fixture(scope="module")
def captured():
    model, example = load_model(MODEL)
    return model, capture(model, example, MODEL)


def _nodes(g, stage) -> list[str]:
    """The node lines of the printed graph, without their position numbers."""
    return [re.sub(r"^\d+: ", "", ln) for ln in print_graph(g, stage, {}).splitlines()
            if re.match(r"^\d+: ", ln)]


def _shape(lines, value) -> list[int]:
    ln = next(ln for ln in lines if ln.startswith(f"%{value}: "))
    return [int(d) for d in re.search(r"\[([\d,]+)\]", ln).group(1).split(",")]


def test_prune_removes_exactly_the_backward_below_the_trainable_layers(captured):
    import copy
    _, g0 = captured
    before = _nodes(g0, "capture")
    g = copy.deepcopy(g0)
    for p in g.params.values():
        p.trainable = p.module in ("fc1", "fc2")        # --train 'fc*'
    after = _nodes(PrunePass().apply(g), "prune")
    # kept: the forward, the loss, fc2's three backward ops, relu_2's, fc1's two gradients;
    # gone: fc1's error (nothing trainable below it needs it) and everything after it
    cut = next(i for i, ln in enumerate(before) if ln.startswith("%fc1.dx: "))
    assert after == before[:cut] + [ln for ln in before[cut + 1:]
                                    if ln.startswith(("%grad:fc1.weight", "%grad:fc1.bias"))]
    assert not any(ln.startswith(("%grad:conv", "%pool2.dx", "%flatten.dx")) for ln in after)


def test_prune_without_frozen_parameters_changes_nothing(captured):
    import copy
    _, g0 = captured
    assert _nodes(PrunePass().apply(copy.deepcopy(g0)), "prune") == _nodes(g0, "capture")


def test_mask_compacts_channels_and_views_weights(captured):
    import copy
    model, g0 = captured
    before = _nodes(g0, "capture")
    g = PrunePass().apply(copy.deepcopy(g0))
    after = _nodes(MaskPass(user_mask(MASK, model, "fc2")).apply(g), "mask")
    kept = {"conv1": 6, "conv2": 9, "fc1": 22}
    assert _shape(before, "conv1.out") == [16, 8, 8, 8]
    assert _shape(after, "conv1.out") == [16, kept["conv1"], 8, 8]
    assert _shape(after, "pool1.out") == [16, kept["conv1"], 4, 4]
    assert _shape(after, "conv2.out") == [16, kept["conv2"], 4, 4]
    assert _shape(after, "flatten.out") == [16, kept["conv2"] * 2 * 2]
    assert _shape(after, "fc1.out") == [16, kept["fc1"]]
    assert _shape(after, "fc2.out") == _shape(before, "fc2.out") == [16, 10]
    assert _shape(after, "grad:fc1.weight") == [kept["fc1"], kept["conv2"] * 4]
    views = {re.match(r"%param:(\S+)\.view", ln).group(1): ln for ln in after
             if " = wview " in ln}
    assert set(views) == {"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
                          "fc1.weight", "fc1.bias", "fc2.weight"}      # fc2.bias: unmasked
    assert "out_idx=[0..3, 6, 8..11], in_idx=[0..5]" in views["conv2.weight"]
    assert "in_block=4" in views["fc1.weight"]      # a flatten of 2x2 planes: blocks of 4
    assert "out_idx=none, in_idx=[0..19, 24, 26]" in views["fc2.weight"]
    # apart from the views and the shapes (also those in attributes), the nodes are the same
    # ops on the same operands, in order
    strip = lambda ln: re.sub(r"\[[\d,]+\]|\.view|shape=\([^)]*\)", "", ln)  # noqa: E731
    assert [strip(ln) for ln in after if " = wview " not in ln] == [strip(ln) for ln in before]
