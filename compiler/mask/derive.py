"""`edgec mask`: derive a user.mask from a model's weights (magnitude / network slimming).

Candidates are the maskable layers of ``driver.mask_layers`` (Conv2d with groups == 1,
Linear) minus the layer that produces the logits.  Each output channel gets a score:

* ``l1``: the L1 norm of the layer's weight row, ``sum |w[o, ...]|``;
* ``bn-gamma``: ``|gamma[o]|`` of the BatchNorm2d that directly follows the layer
  (network slimming, Liu et al. 2017); layers with no such BN fall back to ``l1`` (a note).

The captured training graph tells which layers' channels meet at a residual ``add``: every
forward value carries the set of candidate layers whose channels it holds (conv/linear
start ``{layer}``; depthwise convs -- BatchNorm and average pooling included --, relu,
hardtanh, maxpool and reshape pass it through; ``add`` unions its two inputs and puts all
of them in one *group*).  A group gets one kept list, chosen by the sum of its members'
scores, each normalised by its layer's mean score.  Layers whose channels reach the input
of a grouped conv (1 < groups < C) or the logits cannot be masked and are left out, with
their whole group.

``keep``: per layer, the ``ceil(keep * C)`` (at least 1) highest scores.  With
``global_``: one budget ``ceil(keep * sum C)`` over all units (a group counts its channels
once), ranked by normalised score; each unit first keeps its best channel, then the
budget is filled in score order (ties: unit order, then channel index).
"""
from __future__ import annotations

import math
import sys

import torch

from edgec.isa.errors import EdgecError

from ..ir.graph import Graph
from ..passes.mask import is_depthwise
from .file import mask_line

BY = ("l1", "bn-gamma")
_PASS = ("relu", "hardtanh", "maxpool", "reshape")


def carried_sets(g: Graph, cands: set[str]):
    """(value -> frozenset of candidate layers its channels come from, forward nodes,
    groups as a list of sets of layers that meet at residual adds)."""
    carry: dict[str, frozenset] = {}
    parent: dict[str, str] = {}

    def find(a):
        while parent.setdefault(a, a) != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    fwd = []
    for n in g.nodes:
        if n.op == "loss_grad":
            break
        fwd.append(n)
        ins = [carry.get(v, frozenset()) for v in n.inputs]
        if n.op in ("conv", "linear") and not is_depthwise(g, n):
            out = frozenset({n.layer}) if n.layer in cands and n.attrs.get("groups", 1) == 1 \
                else frozenset()
        elif n.op == "conv" or n.op in _PASS:       # depthwise conv or channel-keeping op
            out = ins[0]
        elif n.op == "add":
            out = ins[0] | ins[1]
            members = sorted(out)
            for m in members[1:]:
                parent[find(m)] = find(members[0])
        else:
            out = frozenset()
        for o in n.outputs:
            carry[o] = out
    groups: dict[str, set[str]] = {}
    for lay in cands:
        groups.setdefault(find(lay), set()).add(lay)
    return carry, fwd, list(groups.values())


def _l1(module: torch.nn.Module) -> torch.Tensor:
    w = module.weight.detach().to(torch.float64)
    return w.abs().reshape(w.shape[0], -1).sum(dim=1)


def derive_mask(model: torch.nn.Module, example: torch.Tensor, model_path: str,
                keep: float, by: str = "l1", global_: bool = False,
                note=None, graph: Graph | None = None) -> dict[str, list[int]]:
    """{layer: kept output channels (ascending)} for the candidate layers, in module order.
    ``graph``: the model's captured training graph, if already at hand (else captured)."""
    from ..frontend.capture import capture
    from .layers import mask_layers
    note = note or (lambda msg: print(f"edgec: note: {msg}", file=sys.stderr))
    if not isinstance(keep, (int, float)) or not 0 < keep <= 1:
        raise EdgecError(f"--keep {keep}: must be a fraction in (0, 1], e.g. 0.5")
    if by not in BY:
        raise EdgecError(f"--by {by}: unknown score; use one of {', '.join(BY)}")
    g = graph if graph is not None else capture(model, example, model_path)
    layers, _refuse = mask_layers(model)
    logits_layer = g.producer(g.outputs["logits"]).layer
    cands = {k for k in layers if k != logits_layer}
    carry, fwd, groups = carried_sets(g, cands)

    # layers that cannot be masked: reaching a grouped conv's input, or the logits
    bad = set(carry.get(g.outputs["logits"], frozenset()))
    for n in fwd:
        if n.op == "conv" and n.attrs.get("groups", 1) > 1 and not is_depthwise(g, n):
            hit = carry.get(n.inputs[0], frozenset())
            for lay in sorted(hit):
                note(f"layer {lay!r} feeds the grouped convolution {n.layer!r} "
                     f"(groups={n.attrs['groups']}): left unmasked")
            bad |= hit
    mods = dict(model.named_modules())
    order = {name: i for i, name in enumerate(mods)}
    units = []
    for grp in groups:
        if grp & bad:
            continue
        units.append(sorted(grp, key=order.__getitem__))
    units.sort(key=lambda u: order[u[0]])

    # BatchNorm directly after each layer (from the graph)
    bn_after: dict[str, str] = {}
    if by == "bn-gamma":
        prod = {}
        for n in fwd:
            if n.op in ("conv", "linear") and not is_depthwise(g, n):
                for o in n.outputs:
                    prod[o] = n.layer
        for n in fwd:
            if n.op == "conv" and is_depthwise(g, n) and n.inputs[0] in prod \
                    and isinstance(mods.get(n.layer), torch.nn.BatchNorm2d) \
                    and mods[n.layer].weight is not None:
                bn_after.setdefault(prod[n.inputs[0]], n.layer)

    def score(lay: str) -> torch.Tensor:
        if by == "bn-gamma":
            bn = bn_after.get(lay)
            if bn is not None and mods[bn].weight.shape[0] == layers[lay]:
                return mods[bn].weight.detach().to(torch.float64).abs()
            note(f"layer {lay!r} is not directly followed by an affine BatchNorm2d: "
                 "scored by the L1 norm of its weights")
        return _l1(mods[lay])

    def normalised(lay: str) -> torch.Tensor:
        s = score(lay)
        m = float(s.mean())
        return s / m if m > 0 else s

    uscore = []
    for u in units:
        cs = {layers[m] for m in u}
        if len(cs) != 1:     # cannot happen for a graph that captured (adds need equal shapes)
            raise EdgecError(f"layers {', '.join(u)} meet at a residual add but have "
                             f"different channel counts {sorted(cs)}")
        tot = sum(normalised(m) for m in u)
        uscore.append(tot / len(u))
    kept_u: list[list[int]] = []
    if not global_:
        for s in uscore:
            k = max(1, math.ceil(keep * len(s) - 1e-9))
            kept_u.append(_top(s, k))
    else:
        total = sum(len(s) for s in uscore)
        budget = max(len(units), math.ceil(keep * total - 1e-9))
        chosen = [set() for _ in units]
        for i, s in enumerate(uscore):
            chosen[i].add(_top(s, 1)[0])
        rest = [(-float(s[c]), i, c) for i, s in enumerate(uscore) for c in range(len(s))
                if c not in chosen[i]]
        rest.sort()
        for _, i, c in rest[:budget - len(units)]:
            chosen[i].add(c)
        kept_u = [sorted(c) for c in chosen]
    out = {}
    for u, kept in zip(units, kept_u):
        for m in u:
            out[m] = list(kept)
    return dict(sorted(out.items(), key=lambda kv: order[kv[0]]))


def _top(s: torch.Tensor, k: int) -> list[int]:
    """Indices of the k highest scores (ties: lower index first), ascending."""
    idx = sorted(range(len(s)), key=lambda c: (-float(s[c]), c))[:k]
    return sorted(idx)


def format_mask(mask: dict[str, list[int]], header: str) -> str:
    lines = [f"# {header}"]
    lines += [mask_line(name, kept) for name, kept in mask.items()]
    return "\n".join(lines) + "\n"
