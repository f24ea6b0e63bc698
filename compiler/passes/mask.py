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

from ..mask.file import residual_error
from ..ir.graph import Graph, Node
from .shapes import infer

_PASSTHROUGH = ("relu", "maxpool", "relu_bwd", "maxpool_bwd", "loss_grad", "hardtanh",
                "hardtanh_bwd")
_NOVIEW = {"out_idx": None, "in_idx": None, "in_block": 1, "out_tab": None, "in_tab": None}


def is_depthwise(g: Graph, n) -> bool:
    """conv/conv_eb/conv_wg of a conv whose every output channel reads only the input
    channel of the same index (depthwise convs, and the BatchNorm / average-pool
    lowerings); judged on the weight's shape (conv_wg: its output, the weight gradient)."""
    grp = n.attrs.get("groups", 1)
    if grp == 1:
        return False
    w = g.values[n.outputs[0] if n.op == "conv_wg" else n.inputs[1]].shape
    return w[0] == grp and w[1] == 1


@dataclass
class MaskPass:
    name = "mask"
    mask: dict[str, list[int]] = field(default_factory=dict)

    def _where(self, layer: str | None) -> str:
        where = getattr(self.mask, "where", {})
        return f"{where[layer]}: " if layer in where else ""

    def _kept(self, layer: str | None) -> list[int] | None:
        return None if layer is None else list(self.mask[layer])

    def apply(self, g: Graph) -> Graph:
        # keep[v] = (layer whose kept list selects dim 1 of v, or None; block size)
        keep: dict[str, tuple[str | None, int]] = {v: (None, 1) for v in g.inputs}
        views: dict[tuple, str] = {}
        ties = []       # [layer a, layer b, loc, layer] of each add where two masks meet
        new_nodes = []
        # weight value -> (rows' layer, dim-1 layer, block) its forward op used
        fwd_view: dict[str, tuple[str | None, str | None, int]] = {}

        def view_of(pval: str, out_layer: str | None, in_layer: str | None, block: int,
                    at_node) -> str:
            p = g.param_of_value(pval)
            in_l = in_layer if not p.is_bias else None
            key = (pval, out_layer, in_l, block if in_l else 1)
            if key in views:
                return views[key]
            if out_layer is None and in_l is None:
                views[key] = pval
                return pval
            name = g.fresh(f"{pval}.view")
            g.add_value(name, (), g.values[pval].dtype)
            attrs = {"out_idx": self._kept(out_layer), "in_idx": self._kept(in_l),
                     "in_block": block if in_l else 1, "out_tab": out_layer, "in_tab": in_l}
            n = g.add_node("wview", [pval], [name], attrs, at_node.layer, at_node.loc,
                           index=len(g.nodes))
            g.nodes.pop()
            new_nodes.append(n)
            g.values[name].shape = infer(g, n)
            views[key] = name
            return name

        def channels(v: str) -> int:
            return g.values[v].shape[1]

        for n in g.nodes:
            if n.op in ("conv", "linear"):
                in_layer, block = keep.get(n.inputs[0], (None, 1))
                w = n.inputs[1]
                if is_depthwise(g, n):
                    if n.layer in self.mask:
                        raise EdgecError(f"{self._where(n.layer)}layer {n.layer!r} is "
                                         "depthwise: its channels follow its input")
                    fwd_view[w] = (in_layer, None, 1)        # rows follow the input
                elif n.attrs.get("groups", 1) > 1:
                    if in_layer is not None or n.layer in self.mask:
                        lay = in_layer if in_layer is not None else n.layer
                        raise EdgecError(
                            f"{self._where(lay)}{n.loc or '?'}: layer {n.layer!r} is a grouped "
                            f"convolution (groups={n.attrs['groups']}); masks on its input "
                            f"or output are not supported (layer {lay!r} is masked)")
                    fwd_view[w] = (None, None, 1)
                else:
                    fwd_view[w] = (n.layer if n.layer in self.mask else None, in_layer, block)
                fwd_rows = fwd_view[w][0]
            if n.op in ("conv", "conv_eb", "conv_wg") and is_depthwise(g, n):
                n.attrs["groups"] = channels(n.inputs[0])     # compacted channel count
            if n.op in ("conv", "linear", "conv_eb", "linear_eb"):
                w = n.inputs[1]
                rows, cols, blk = fwd_view[w]
                n.inputs[1] = view_of(w, rows, cols, blk, n)
                if len(n.inputs) == 3:
                    n.inputs[2] = view_of(n.inputs[2], rows, None, 1, n)
            new_nodes.append(n)
            for o in n.outputs:
                g.values[o].shape = infer(g, n)
            out = n.outputs[0]
            if n.op in ("conv", "linear"):
                keep[out] = (fwd_rows, 1)
            elif n.op in _PASSTHROUGH:
                keep[out] = keep.get(n.inputs[0], (None, 1))
            elif n.op == "add":
                ka, kb = keep.get(n.inputs[0], (None, 1)), keep.get(n.inputs[1], (None, 1))
                if self._kept(ka[0]) != self._kept(kb[0]):
                    raise residual_error(self.mask, (ka[0], kb[0]), n.loc, n.layer)
                if ka[0] is not None and kb[0] is not None and ka[0] != kb[0]:
                    ties.append([ka[0], kb[0], n.loc, n.layer])
                keep[out] = ka if ka[0] is not None else kb
            elif n.op == "reshape":
                lay, blk = keep.get(n.inputs[0], (None, 1))
                src = g.values[n.inputs[0]].shape
                hw = 1
                for d in src[2:]:
                    hw *= d
                keep[out] = (lay, blk * hw)
            if n.op == "reshape":
                n.attrs["shape"] = g.values[out].shape
            elif n.op == "conv_eb":
                N, _, H, W = n.attrs["in_shape"]
                wshape = g.values[n.inputs[1]].shape
                n.attrs["in_shape"] = (N, wshape[1] * n.attrs.get("groups", 1), H, W)
                g.values[out].shape = infer(g, n)
        g.nodes = new_nodes
        g.meta["mask"] = {k: list(v) for k, v in sorted(self.mask.items())}
        if ties:        # what edgec remask re-checks for another mask with the same counts
            g.meta["mask_ties"] = ties
        return g


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
        view = src.get(n.inputs[1]) if n.op in ("conv", "conv_eb") and len(n.inputs) > 1 \
            else None
        if view is not None and view.attrs["out_tab"] not in (None, n.layer) \
                and u.values[view.inputs[0]].shape[1] == 1:
            # depthwise: its rows follow another layer's mask, its groups the kept count
            full_groups[n.layer] = u.values[view.inputs[0]].shape[0]
        if n.op in ("conv", "conv_eb", "conv_wg") and n.layer in full_groups:
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
