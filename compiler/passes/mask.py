"""Mask pass: apply a user's channel mask by compacting the graph.

Every use of a parameter by a compute op goes through a ``wview`` node that selects the
kept output channels (rows) and, along dim 1, the kept channels of the layer feeding it
(blocks of ``in_block`` elements; ``H*W`` after a flatten).  Activations, errors and
gradients then carry only kept channels; shapes are re-inferred.  The table names of the
view (``out_tab``/``in_tab``: the masked layers whose kept lists they are) become the
channel index tables of prog.bin.

Channels follow their input through activations, pooling, BatchNorm and depthwise convs
(their rows are selected by the input's kept list).  A grouped conv with 1 < groups < C
accepts no mask on its input.  Tensors that meet at a residual add must keep the same
channels.
"""
from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass, field

import numpy as np

from edgec.isa.errors import EdgecError

from ..mask.file import ranges, residual_error
from ..ir.graph import Graph, Node
from ..ir.ops import CONV_OPS, MAC_EB, MAC_FORWARD, MAC_WG
from .shapes import infer

_NOVIEW = {"out_idx": None, "in_idx": None, "in_block": 1, "out_tab": None, "in_tab": None}


def is_depthwise(g: Graph, n) -> bool:
    """conv/conv_eb/conv_wg of a conv whose every output channel reads only the input
    channel of the same index (depthwise convs, and the BatchNorm / average-pool
    lowerings); judged on the weight's shape (conv_wg: its output, the weight gradient)."""
    grp = n.attrs.get("groups", 1)
    if grp == 1:
        return False
    w = g.values[n.outputs[0] if n.op in MAC_WG else n.inputs[1]].shape
    return w[0] == grp and w[1] == 1


@dataclass
class MaskPass:
    name = "mask"
    mask: dict[str, list[int]] = field(default_factory=dict)

    def _where(self, layer: str | None) -> str:
        where = getattr(self.mask, "where", {})
        return f"{where[layer]}: " if layer in where else ""

    def _kept(self, layer: str | None) -> list[int] | None:
        if layer is None:
            return None
        derived = getattr(self, "derived", {})
        return list(derived[layer] if layer in derived else self.mask[layer])

    def apply(self, g: Graph) -> Graph:
        self.derived = {}           # index tables of concat / slice outputs (their names)
        m = _Masking(self, g, keep={v: (None, 1) for v in g.inputs})
        for n in g.nodes:
            m.visit(n)
        g.nodes = m.new_nodes
        g.meta["mask"] = {k: list(v) for k, v in sorted(self.mask.items())}
        g.meta.pop("tables", None)
        if self.derived:
            if g.meta.get("remaskable"):
                raise EdgecError("--remaskable: a mask whose channels pass a concat or a "
                                 "split is not supported (its derived index tables are not "
                                 "re-derived by edgec remask); compile without --remaskable")
            g.meta["tables"] = {k: list(v) for k, v in sorted(self.derived.items())}
        if m.ties:      # what edgec remask re-checks for another mask with the same counts
            g.meta["mask_ties"] = m.ties
        return g


@dataclass
class _Masking:
    """The state of one mask pass over a graph, shared by its channel rules."""
    mp: "MaskPass"
    g: Graph
    # keep[v] = (layer whose kept list selects dim 1 of v, or None; block size)
    keep: dict = field(default_factory=dict)
    views: dict = field(default_factory=dict)
    ties: list = field(default_factory=list)   # [layer a, layer b, loc, layer] of each add
    new_nodes: list = field(default_factory=list)
    # weight value -> (rows' layer, dim-1 layer, block) its forward op used
    fwd_view: dict = field(default_factory=dict)
    fwd_rows: str | None = None     # the rows' layer of the last forward MAC

    def kept_of(self, v: str) -> tuple[str | None, int]:
        return self.keep.get(v, (None, 1))

    def view_of(self, pval: str, out_layer: str | None, in_layer: str | None, block: int,
                at_node) -> str:
        g = self.g
        p = g.param_of_value(pval)
        in_l = in_layer if not p.is_bias else None
        key = (pval, out_layer, in_l, block if in_l else 1)
        if key in self.views:
            return self.views[key]
        if out_layer is None and in_l is None:
            self.views[key] = pval
            return pval
        name = g.fresh(f"{pval}.view")
        g.add_value(name, (), g.values[pval].dtype)
        attrs = {"out_idx": self.mp._kept(out_layer), "in_idx": self.mp._kept(in_l),
                 "in_block": block if in_l else 1, "out_tab": out_layer, "in_tab": in_l}
        n = g.add_node("wview", [pval], [name], attrs, at_node.layer, at_node.loc,
                       index=len(g.nodes))
        g.nodes.pop()
        self.new_nodes.append(n)
        g.values[name].shape = infer(g, n)
        self.views[key] = name
        return name

    def forward_view(self, n) -> None:
        """The view a forward MAC reads its weight through (its EB shares it)."""
        mp, g = self.mp, self.g
        in_layer, block = self.kept_of(n.inputs[0])
        w = n.inputs[1]
        if is_depthwise(g, n):
            if n.layer in mp.mask:
                raise EdgecError(f"{mp._where(n.layer)}layer {n.layer!r} is "
                                 "depthwise: its channels follow its input")
            self.fwd_view[w] = (in_layer, None, 1)        # rows follow the input
        elif n.attrs.get("groups", 1) > 1:
            if in_layer is not None or n.layer in mp.mask:
                lay = in_layer if in_layer is not None else n.layer
                raise EdgecError(
                    f"{mp._where(lay)}{n.loc or '?'}: layer {n.layer!r} is a grouped "
                    f"convolution (groups={n.attrs['groups']}); masks on its input "
                    f"or output are not supported (layer {lay!r} is masked)")
            self.fwd_view[w] = (None, None, 1)
        else:
            self.fwd_view[w] = (n.layer if n.layer in mp.mask else None, in_layer, block)
        self.fwd_rows = self.fwd_view[w][0]

    def visit(self, n) -> None:
        g = self.g
        if n.op in MAC_FORWARD:
            self.forward_view(n)
        if n.op in CONV_OPS and is_depthwise(g, n):
            n.attrs["groups"] = g.values[n.inputs[0]].shape[1]     # compacted channel count
        if n.op in MAC_FORWARD | MAC_EB:
            w = n.inputs[1]
            rows, cols, blk = self.fwd_view[w]
            n.inputs[1] = self.view_of(w, rows, cols, blk, n)
            if len(n.inputs) == 3:
                n.inputs[2] = self.view_of(n.inputs[2], rows, None, 1, n)
        self.new_nodes.append(n)
        for o in n.outputs:
            g.values[o].shape = infer(g, n)
        MASK_RULES.get(n.op, _no_channels)(self, n)


def _keep_rows(m: _Masking, n) -> None:
    """conv / linear: the output's channels are the weight view's rows."""
    m.keep[n.outputs[0]] = (m.fwd_rows, 1)


def _keep_same(m: _Masking, n) -> None:
    """The output keeps input 0's channels."""
    m.keep[n.outputs[0]] = m.kept_of(n.inputs[0])


def _keep_meet(m: _Masking, n) -> None:
    """add: both operands must keep the same channels (a tie when two masks meet)."""
    ka, kb = m.kept_of(n.inputs[0]), m.kept_of(n.inputs[1])
    if m.mp._kept(ka[0]) != m.mp._kept(kb[0]):
        names = [k if k is not None else _channel_source(m.g, v)
                 for k, v in ((ka[0], n.inputs[0]), (kb[0], n.inputs[1]))]
        raise residual_error(m.mp.mask, names, n.loc, n.layer)
    if ka[0] is not None and kb[0] is not None and ka[0] != kb[0]:
        m.ties.append([ka[0], kb[0], n.loc, n.layer])
    m.keep[n.outputs[0]] = ka if ka[0] is not None else kb


def _channel_source(g: Graph, v: str) -> str | None:
    """The conv/linear layer whose output channels `v` carries (through element-wise ops,
    pooling, BatchNorm and depthwise convs); None for the model's input."""
    while True:
        n = g.producer(v)
        if n is None:
            return None
        if n.op in MAC_FORWARD and not is_depthwise(g, n):
            return n.layer
        v = n.inputs[0]


def _keep_flatten(m: _Masking, n) -> None:
    """reshape: channels become dim-1 blocks of H*W; the target shape is compacted."""
    out = n.outputs[0]
    lay, blk = m.kept_of(n.inputs[0])
    src = m.g.values[n.inputs[0]].shape
    hw = 1
    for d in src[2:]:
        hw *= d
    m.keep[out] = (lay, blk * hw)
    n.attrs["shape"] = m.g.values[out].shape


def _conv_eb_in_shape(m: _Masking, n) -> None:
    """conv_eb: its in_shape attribute follows the (compacted) weight view."""
    g = m.g
    N, _, H, W = n.attrs["in_shape"]
    wshape = g.values[n.inputs[1]].shape
    n.attrs["in_shape"] = (N, wshape[1] * n.attrs.get("groups", 1), H, W)
    g.values[n.outputs[0]].shape = infer(g, n)


def _keep_concat(m: _Masking, n) -> None:
    """concat: each operand's kept channels at its channel offset in the unmasked concat
    (attr sizes): the consumer's index table is that list, a table of its own
    (``cat:<output>``) unless no operand is masked."""
    kept, off, any_mask = [], 0, False
    for v, size in zip(n.inputs, n.attrs["sizes"]):
        lay, blk = m.kept_of(v)
        sel = m.mp._kept(lay)
        any_mask |= sel is not None
        kept += [off + c for c in (sel if sel is not None else range(size))]
        off += size
    if any_mask and not n.attrs.get("grad"):     # an error's channels name no table
        m.keep[n.outputs[0]] = _derived(m, f"cat:{n.outputs[0]}", kept, off)


def _derived(m: _Masking, name: str, kept: list[int], width: int) -> tuple:
    if kept == list(range(width)):
        return (None, 1)
    m.mp.derived[name] = kept
    return (name, 1)


def _keep_slice(m: _Masking, n) -> None:
    """slice: the part of the input's kept channels in [start, stop), shifted to start
    at 0; the compacted range c0, c1 follows (an error slices a concat's error: its
    channels are those of the forward value ``sel``)."""
    a = n.attrs
    lay, _ = m.kept_of(a.get("sel") or n.inputs[0])
    sel = m.mp._kept(lay)
    start, stop = a["start"], a["stop"]
    if sel is None:
        a["c0"], a["c1"] = start, stop
        m.keep[n.outputs[0]] = (None, 1)
    else:
        part = [c - start for c in sel if start <= c < stop]
        if not part:
            raise EdgecError(f"{m.mp._where(lay)}{n.loc or '?'}: layer {n.layer!r}: the "
                             f"split part of channels {start}-{stop - 1} keeps no channel "
                             f"of the mask (layer {lay!r}); keep at least one")
        a["c0"] = sum(1 for c in sel if c < start)
        a["c1"] = a["c0"] + len(part)
        if not a.get("grad"):
            m.keep[n.outputs[0]] = _derived(m, f"slice:{n.outputs[0]}", part, stop - start)
    m.g.values[n.outputs[0]].shape = infer(m.g, n)


def _keep_gate(m: _Masking, n) -> None:
    """chmul: x and its per-channel gate s keep the same channels (an error dy * s
    carries no selection, like every error)."""
    if n.attrs.get("grad"):
        return
    kx, ks = m.kept_of(n.inputs[0]), m.kept_of(n.inputs[1])
    if m.mp._kept(kx[0]) != m.mp._kept(ks[0]):
        where = m.mp._where(kx[0] or ks[0])
        shown = [f"{_selection(k[0])} keeps {ranges(m.mp._kept(k[0]))}" if k[0]
                 else "keeps all channels" for k in (kx, ks)]
        raise EdgecError(f"{where}{n.loc or '?'}: layer {n.layer!r}: a tensor and the "
                         f"per-channel gate it is multiplied by must keep the same "
                         f"channels, but the tensor ({shown[0]}) and the gate "
                         f"({shown[1]}) differ; mask the gate's producer identically")
    if kx[0] is not None and ks[0] is not None and kx[0] != ks[0]:
        m.ties.append([kx[0], ks[0], n.loc, n.layer])
    m.keep[n.outputs[0]] = kx if kx[0] is not None else ks


def _selection(tab: str) -> str:
    """What selects a value's channels, for a message: a layer, or a concat / split."""
    kind, _, value = tab.partition(":")
    if kind in ("cat", "slice") and value:
        return f"{'concat' if kind == 'cat' else 'split part'} {value!r}"
    return f"layer {tab!r}"


def _no_channels(m: _Masking, n) -> None:
    """The output carries no channel selection of its own (shapes come from infer)."""


#: one channel rule per op the mask pass sees (op registry stage ``mask``, kind
#: ``OpDef.channels``), run after the op's operands are viewed and its shape re-inferred
MASK_RULES = {
    "conv": _keep_rows, "linear": _keep_rows,
    "relu": _keep_same, "hardtanh": _keep_same, "maxpool": _keep_same,
    "relu_bwd": _keep_same, "hardtanh_bwd": _keep_same, "maxpool_bwd": _keep_same,
    "loss_grad": _keep_same,
    "add": _keep_meet,
    "reshape": _keep_flatten,
    "concat": _keep_concat, "slice": _keep_slice,
    "chmul": _keep_gate, "chmul_ds": _no_channels,
    "conv_eb": _conv_eb_in_shape, "linear_eb": _no_channels,
    "conv_wg": _no_channels, "linear_wg": _no_channels, "bias_grad": _no_channels,
}


def calibration_graphs(g: Graph) -> list[Graph]:
    """The float graphs the quantize pass calibrates a masked graph ``g`` on: the unmasked
    model, and ``g`` with every masked layer keeping a seeded random choice of as many
    channels as the user's mask keeps (seeded by the count and the width, so layers that
    meet at a residual add choose alike).  Neither depends on WHICH channels the mask keeps,
    so neither do the program's formats: what lets ``edgec remask`` swap index tables."""
    if not set(g.meta.get("mask", {})) - set(_class_rows(g)):
        return [g]          # no user mask

    def pick(k: int, c: int) -> list[int]:
        rng = np.random.default_rng(zlib.crc32(f"{k}/{c}/0".encode()))
        return sorted(int(i) for i in rng.choice(c, k, replace=False))
    return [unmasked(g), with_kept(g, pick)]


def unmasked(g: Graph) -> Graph:
    """A copy of the masked graph ``g`` with every channel kept again: its views removed,
    shapes re-inferred at full width.  Only a class subset (``meta class_ids``, a row view
    of the logits layer that is not part of the user's mask) stays."""
    u = copy.deepcopy(g)
    src = {n.outputs[0]: n for n in u.nodes if n.op == "wview"}
    full_groups = {}        # layer -> channels of its depthwise convs (BN, pooling too)
    for n in u.nodes:
        view = src.get(n.inputs[1]) if n.op in CONV_OPS - MAC_WG and len(n.inputs) > 1 \
            else None
        if view is not None and view.attrs["out_tab"] not in (None, n.layer) \
                and u.values[view.inputs[0]].shape[1] == 1:
            # depthwise: its rows follow another layer's mask, its groups the kept count
            full_groups[n.layer] = u.values[view.inputs[0]].shape[0]
        if n.op in CONV_OPS and n.layer in full_groups:
            n.attrs["groups"] = full_groups[n.layer]
        n.inputs = [src[v].inputs[0] if v in src else v for v in n.inputs]
    u.nodes = [n for n in u.nodes if n.op != "wview"]
    for v in src:
        del u.values[v]
    return MaskPass(_class_rows(g)).apply(u)


def with_kept(g: Graph, pick) -> Graph:
    """A copy of the masked graph ``g`` whose views keep ``pick(k, c)`` (k of the c
    channels) in every masked layer instead of the user's choice; same shapes.  A class
    subset (``meta class_ids``) stays."""
    u = copy.copy(g)
    fixed = set(_class_rows(g))
    u.nodes = []
    for n in g.nodes:
        if n.op == "wview":
            a = dict(n.attrs)
            full = g.values[n.inputs[0]].shape        # in_idx: only on >= 2-D weights
            if a["out_idx"] is not None and a["out_tab"] not in fixed:
                a["out_idx"] = pick(len(a["out_idx"]), full[0])
            if a["in_idx"] is not None:
                a["in_idx"] = pick(len(a["in_idx"]), full[1] // a["in_block"])
            n = Node(n.op, n.inputs, n.outputs, a, n.layer, n.loc)
        u.nodes.append(n)
    return u


def _class_rows(g: Graph) -> dict[str, list[int]]:
    """{logits layer: class ids} of a --classes graph, else {}."""
    if "class_ids" not in g.meta:
        return {}
    return {g.producer(g.outputs["logits"]).layer: list(g.meta["class_ids"])}
