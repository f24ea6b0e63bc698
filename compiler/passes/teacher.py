"""Teacher pass: targets from a frozen teacher (``--labels pseudo``, ``--loss kd``).

The teacher is the pretrained model itself.  The pass clones the forward subgraph (every
op the logits depend on) in front of the student's forward; in the clone each TRAINABLE
parameter is replaced by a frozen constant copy of its pretrained value (parameter
``teacher:<name>``, kind ``teacher`` / ``teacher_bias``), while frozen parameters and
constants (BatchNorm statistics, pooling weights, ``--freeze``) are shared.  Values and
layers of the clone are named ``teacher.<name>``; the user's mask does not apply to them
(the teacher is the unpruned pretrained model).  The loss then takes the teacher's logits
instead of the labels (``loss_grad`` with attribute ``target``).  With ``own_bn`` the teacher
also gets its own copies of the BatchNorm constants (``teacher:<bn>:scale``, ``:shift``,
``:mean``; same kinds), so the student's statistics can differ from the pretrained ones the
teacher keeps (BatchNorm per domain, docs/numerics.md):

* ``pseudo``: the target class is the teacher's argmax (first maximum); a sample whose
  teacher confidence (softmax maximum) is below ``threshold`` contributes no gradient;
* ``kd``: the target is the teacher's softmax, both softmaxes at temperature ``temp`` (a
  power of two): the gradient is ``softmax(z/T) - softmax(t/T)`` (mean over the batch).

The integer method is in docs/numerics.md (loss gradient with a teacher).
"""
from __future__ import annotations

from dataclasses import dataclass

from edgec.isa.errors import EdgecError

from ..ir.graph import Graph, Param

PREFIX = "teacher."
BN_KINDS = ("bn_scale", "bn_shift", "bn_mean")


def forward_slice(g: Graph, value: str) -> list:
    """The nodes ``value`` depends on, in graph order."""
    need, out = {value}, []
    for n in reversed(g.nodes):
        if any(o in need for o in n.outputs):
            out.append(n)
            need.update(n.inputs)
    out.reverse()
    return out


def teacher_logits(g: Graph) -> str:
    """The value holding the teacher's logits (second operand of the teacher loss)."""
    return next(n.inputs[1] for n in g.nodes if n.op == "loss_grad")


@dataclass
class TeacherPass:
    name = "teacher"
    target: str = "pseudo"
    threshold: float = 0.5          # pseudo: minimum teacher softmax maximum
    temp: float = 1.0               # kd: softmax temperature (a power of two)
    own_bn: bool = False            # the teacher keeps its own BatchNorm constants

    def apply(self, g: Graph) -> Graph:
        loss = next((n for n in g.nodes if n.op == "loss_grad"), None)
        if loss is None or loss.attrs.get("target", "labels") != "labels":
            raise EdgecError("internal error: the teacher pass needs the labelled loss")
        logits = g.outputs["logits"]
        ren = {}
        for p in list(g.params.values()):
            if p.trainable or (self.own_bn and p.kind in BN_KINDS):
                kind = p.kind if not p.trainable else (
                    "teacher_bias" if p.is_bias else "teacher")
                t = Param(f"teacher:{p.name}", g.fresh(f"param:teacher:{p.name}"), p.shape,
                          PREFIX + p.module, kind, False)
                v = g.values[p.value]
                g.add_value(t.value, v.shape, v.dtype)
                g.params[t.name] = t
                ren[p.value] = t.value
        clone = []
        for n in forward_slice(g, logits):
            for o in n.outputs:
                ren[o] = g.fresh(PREFIX + o)
                g.add_value(ren[o], g.values[o].shape, g.values[o].dtype)
            clone.append(type(n)(n.op, [ren.get(v, v) for v in n.inputs],
                                 [ren[o] for o in n.outputs], dict(n.attrs),
                                 PREFIX + (n.layer or "forward"), n.loc))
        g.nodes[0:0] = clone            # before the student: its views win for the backward
        loss.inputs = [loss.inputs[0], ren[logits]]
        opt = ({"threshold": float(self.threshold)} if self.target == "pseudo"
               else {"temp": float(self.temp)})
        loss.attrs.update(target=self.target, **opt)
        g.meta["teacher"] = {"target": self.target, **opt,
                             **({"own_bn": True} if self.own_bn else {})}
        return g
