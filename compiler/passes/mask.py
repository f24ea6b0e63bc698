"""Mask pass: apply a user's channel mask by compacting the graph.

Every use of a parameter by a compute op goes through a ``wview`` node that selects the
kept output channels (rows) and, along dim 1, the kept channels of the layer feeding it
(blocks of ``in_block`` elements; ``H*W`` after a flatten).  Activations, errors and
gradients then carry only kept channels; shapes are re-inferred.  The table names of the
view (``out_tab``/``in_tab``: the masked layers whose kept lists they are) become the
channel index tables of prog.bin.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..ir.graph import Graph
from .shapes import infer

_PASSTHROUGH = ("relu", "maxpool", "relu_bwd", "maxpool_bwd", "loss_grad")


@dataclass
class MaskPass:
    name = "mask"
    mask: dict[str, list[int]] = field(default_factory=dict)

    def apply(self, g: Graph) -> Graph:
        # keep[v] = (layer whose kept list selects dim 1 of v, or None; block size)
        keep: dict[str, tuple[str | None, int]] = {v: (None, 1) for v in g.inputs}
        views: dict[tuple[str, str | None], str] = {}   # (param value, in layer) -> view
        new_nodes = []
        fwd_keep: dict[str, tuple[str | None, int]] = {}   # weight -> forward input keep

        def view_of(pval: str, in_layer: str | None, block: int, at_node) -> str:
            key = (pval, in_layer, block)
            if key in views:
                return views[key]
            p = g.param_of_value(pval)
            out_layer = p.module if p.module in self.mask else None
            in_l = in_layer if p.kind == "weight" else None
            if out_layer is None and in_l is None:
                views[key] = pval
                return pval
            name = g.fresh(f"{pval}.view")
            g.add_value(name, (), g.values[pval].dtype)
            attrs = {"out_idx": list(self.mask[out_layer]) if out_layer else None,
                     "in_idx": list(self.mask[in_l]) if in_l else None,
                     "in_block": block if in_l else 1,
                     "out_tab": out_layer, "in_tab": in_l}
            n = g.add_node("wview", [pval], [name], attrs, at_node.layer, at_node.loc,
                           index=len(g.nodes))
            g.nodes.pop()
            new_nodes.append(n)
            g.values[name].shape = infer(g, n)
            views[key] = name
            return name

        for n in g.nodes:
            if n.op in ("conv", "linear", "conv_eb", "linear_eb"):
                data = n.inputs[0]
                if n.op in ("conv", "linear"):
                    in_layer, block = keep.get(data, (None, 1))
                else:   # backward: the view the forward op used (same weight, same input)
                    in_layer, block = fwd_keep[n.inputs[1]]
                w = n.inputs[1]
                fwd_keep.setdefault(w, (in_layer, block))
                n.inputs[1] = view_of(w, in_layer, block, n)
                if len(n.inputs) == 3:
                    n.inputs[2] = view_of(n.inputs[2], None, 1, n)
            new_nodes.append(n)
            for o in n.outputs:
                g.values[o].shape = infer(g, n)
            out = n.outputs[0]
            if n.op in ("conv", "linear"):
                keep[out] = (n.layer if n.layer in self.mask else None, 1)
            elif n.op in _PASSTHROUGH:
                keep[out] = keep.get(n.inputs[0], (None, 1))
            elif n.op == "reshape":
                lay, blk = keep.get(n.inputs[0], (None, 1))
                src = g.values[n.inputs[0]].shape
                hw = 1
                for d in src[2:]:
                    hw *= d
                keep[out] = (lay, blk * hw)
                n.attrs["shape"] = g.values[out].shape
            if n.op == "reshape":
                n.attrs["shape"] = g.values[out].shape
            elif n.op == "conv_eb":
                N, _, H, W = n.attrs["in_shape"]
                n.attrs["in_shape"] = (N, g.values[n.inputs[1]].shape[1], H, W)
                g.values[out].shape = infer(g, n)
        g.nodes = new_nodes
        g.meta["mask"] = {k: list(v) for k, v in sorted(self.mask.items())}
        return g
