"""Prune pass: remove the backward work of frozen parameters.

A frozen parameter (``--freeze``, not matched by ``--train``, ``--bias-only``) gets no
gradient and no update; every backward op that only served frozen gradients disappears,
so error back-propagation stops below the lowest trainable layer.  The pass records what
it removed in ``graph.meta["pruned"]`` (ops and MACs, by op kind).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from edgec.isa.errors import EdgecError

from ..ir.graph import Graph
from ..ir.ops import CONV_OPS, LINEAR_OPS, MAC_FORWARD, MAC_WG


def node_macs(g: Graph, n) -> int:
    """Multiply-accumulates of a conv/linear op (forward, EB or WG: the same count)."""
    V = g.values
    if n.op in LINEAR_OPS:
        dy = V[n.outputs[0] if n.op in MAC_FORWARD else n.inputs[0]].shape
        w = (V[n.inputs[1]].shape if n.op not in MAC_WG else V[n.outputs[0]].shape)
        return dy[0] * w[0] * w[1]
    if n.op in CONV_OPS:
        y = V[n.outputs[0] if n.op in MAC_FORWARD else n.inputs[0]].shape
        w = V[n.outputs[0] if n.op in MAC_WG else n.inputs[1]].shape
        return y[0] * y[1] * y[2] * y[3] * w[1] * w[2] * w[3]
    return 0


def select_trainable(names: list[str], train=(), freeze=(), bias_only=False,
                     bn_weights=()) -> set[str]:
    """Parameter names left trainable by --train/--freeze globs and --bias-only.

    --bias-only trains every bias and every BatchNorm weight (``bn_weights``); --train
    (repeatable) restricts training to the matching names; --freeze removes matches."""
    def match(pat: str) -> set[str]:
        hit = {n for n in names if fnmatch.fnmatchcase(n, pat)}
        if not hit:
            shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise EdgecError(f"pattern {pat!r} matches no parameter (parameters: {shown})")
        return hit

    keep = set(names)
    if bias_only:
        keep = {n for n in names if n.rpartition(".")[2] == "bias" or n in bn_weights}
    if train:
        sel = set()
        for pat in train:
            sel |= match(pat)
        keep &= sel
    for pat in freeze:
        keep -= match(pat)
    if not keep:
        raise EdgecError("no parameter is left trainable (check --train/--freeze/--bias-only)")
    return keep


@dataclass
class PrunePass:
    name = "prune"

    def apply(self, g: Graph) -> Graph:
        for p in g.params.values():
            if not p.trainable:
                g.outputs.pop(f"grad:{p.name}", None)
        shapes = dict(g.values)
        snapshot = Graph(values=shapes)
        dropped = g.remove_dead()
        macs: dict[str, int] = {}
        for n in dropped:
            macs[n.op] = macs.get(n.op, 0) + node_macs(snapshot, n)
        g.meta["pruned"] = {"ops": len(dropped), "macs": sum(macs.values()),
                            "macs_by_op": dict(sorted(macs.items()))}
        return g
