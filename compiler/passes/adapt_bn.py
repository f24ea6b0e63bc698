"""Adapt-BN pass (``--adapt-bn``): a program that re-estimates every BatchNorm's frozen
statistics from unlabeled user data, on the device.

It runs on the quantized graph of a model whose parameters are all frozen (so the prune
pass has removed the loss and the backward pass: what is left is the forward pass).  For
each BatchNorm it appends one ``bn_adapt`` node that reads the BN's input and rewrites the
BN's constants in place: the int8 scale ``<bn>:scale`` (1/sqrt(var + eps)) and either the
producing conv's frozen bias ``<bn>:mean`` (-mean, mode 0) or the BN shift ``<bn>:shift``
(-mean/sqrt(var + eps), mode 1).  The forward pass of a run uses the constants as they were
when the run started; the constants move 2^-momentum of the way to the batch's values
(docs/numerics.md, "BatchNorm adaptation").
"""
from __future__ import annotations

from dataclasses import dataclass, field

from edgec.isa.errors import EdgecError

from ..ir.graph import Graph

INT32_MAX = 2**31 - 1
SCALE_HEADROOM = 2      # spare exponent bits of the int8 BN scales: variances 16x smaller


def bn_groups(g: Graph) -> list[dict]:
    """Each BatchNorm of the graph: its input value and its constants' (viewed) operands."""
    out = []
    for p in g.params.values():
        if p.kind != "bn_scale":
            continue
        hat = next(n for n in g.nodes if n.op == "conv" and _src(g, n.inputs[1]) == p.value)
        x = hat.inputs[0]
        if len(hat.inputs) == 3:                    # mode 1: the BN has its own shift
            mode, b_op = 1, hat.inputs[2]
        else:                                       # mode 0: -mean is the conv's bias
            prod = g.producer(x)
            mode, b_op = 0, prod.inputs[2]
        out.append(dict(module=p.module, x=x, mode=mode, b=b_op, q=hat.inputs[1],
                        layer=hat.layer, loc=hat.loc))
    return out


def _src(g: Graph, v: str) -> str:
    p = g.producer(v)
    return p.inputs[0] if p is not None and p.op == "wview" else v


def _view(g: Graph, v: str) -> tuple[list[int] | None, str | None]:
    p = g.producer(v)
    if p is None or p.op != "wview":
        return None, None
    return p.attrs["out_idx"], p.attrs.get("out_tab")


@dataclass
class AdaptBNPass:
    name = "update"             # it takes the update stage's place (IR dump 04-update.ir)
    eps: dict = field(default_factory=dict)     # BatchNorm module name -> its eps
    momentum: int = 1

    def apply(self, g: Graph) -> Graph:
        V = g.values
        groups = bn_groups(g)
        if not groups:
            raise EdgecError("--adapt-bn: the model has no BatchNorm2d layer to adapt")
        meta = []
        for b in groups:
            where = f"{b['loc'] or '?'}: BatchNorm {b['module']!r}"
            x = V[b["x"]]
            N, C = x.shape[:2]
            cnt = 1
            for d in x.shape:
                cnt *= d
            cnt //= C
            if cnt * 127 * 127 > INT32_MAX:
                raise EdgecError(f"{where}: --adapt-bn sums {cnt} squares per channel, which "
                                 f"can overflow int32 (at most {INT32_MAX // 127**2}); use a "
                                 f"smaller batch")
            bval, qval = _src(g, b["b"]), _src(g, b["q"])
            (oi, btab), (qi, qtab) = _view(g, b["b"]), _view(g, b["q"])
            if oi != qi:
                raise EdgecError(f"internal error: {where}: bias and scale views differ")
            ex, eb, eq = x.exp, V[bval].exp, V[qval].exp
            d = ex - eb if b["mode"] == 0 else ex + eq - eb
            p = -(ex + eq)
            eps = round(self.eps[b["module"]] * cnt * cnt * 2.0 ** (-2 * ex))
            if not (-128 <= d <= 127 and -128 <= p <= 127 and 0 <= eps < 2**32):
                raise EdgecError(f"{where}: its fixed-point formats are out of the range "
                                 f"--adapt-bn supports (d={d}, p={p}, eps={eps})")
            outs = []
            for v in (bval, qval):
                o = f"adapt:{g.param_of_value(v).name}"
                g.add_value(o, V[v].shape, V[v].dtype, V[v].exp)
                g.outputs[o] = o
                outs.append(o)
            g.add_node("bn_adapt", [b["x"], bval, qval], outs,
                       {"mode": b["mode"], "cnt": cnt, "d": d, "p": p, "eps": eps,
                        "m": self.momentum, "out_idx": oi, "out_tab": qtab, "b_tab": btab},
                       layer=b["module"], loc=b["loc"])
            meta.append({"module": b["module"], "mode": b["mode"],
                         "b": g.param_of_value(bval).name, "q": g.param_of_value(qval).name,
                         "eps": self.eps[b["module"]]})
        g.meta["adapt_bn"] = meta
        return g
