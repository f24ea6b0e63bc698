"""Quantize pass and update pass: fixed-point formats, relu fusion, SGD nodes.

Formats follow docs/numerics.md section 6: weights from their own range, everything else
from a float calibration step of the masked model on ``example_input`` with labels drawn
from ``torch.Generator().manual_seed(0)``; with ``--remaskable`` (``graph.meta["remaskable"]``), pooled over
the graphs of ``mask.calibration_graphs`` (the unmasked model and a seeded stand-in mask
with the user's kept counts), so the formats depend on how many channels a mask keeps,
never on which (what lets ``edgec remask`` swap masks).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from edgec.isa.errors import EdgecError

from ..ir.float_interp import run_float
from ..ir.graph import Graph
from ..ir.ops import (ACTIVATIONS, CHANNEL_OPS, GRADIENTS, MAC_EB, MAC_FORWARD, MAC_WG,
                      SAME_FORMAT)
from .dynfmt import SPAN

MU_SHIFT = 16       # momentum mu ~ mumul / 2**MU_SHIFT
from .mask import calibration_graphs

ACC_MAX = 2**31 - 1
GRAD_HEADROOM = 1       # dynamic formats: spare exponent bits of weight/bias gradients
BIAS_BITS = 24


def expo(t: torch.Tensor) -> int:
    return _expo_of_max(float(t.detach().abs().max()) if t.numel() else 0.0)


def _expo_of_max(m: float) -> int:
    """expo() of a tensor whose largest magnitude is m."""
    if m == 0.0 or not math.isfinite(m):
        return -7
    return math.ceil(math.log2(m / 127.0))


def expo_fit(t: torch.Tensor, search: int = 3) -> int:
    """The exponent in ``[expo(t) - search, expo(t)]`` whose int8 quantization (nearest,
    saturating) of ``t`` has the least squared error: a heavy-tailed tensor trades a few
    saturated outliers for finer steps everywhere else (numerics.md section 6).  Computed
    on |t| in float64 numpy, zeros dropped (they quantize exactly), buffers reused."""
    a = np.abs(t.detach().numpy().reshape(-1)).astype(np.float64)    # exact, like |t|
    e0 = _expo_of_max(float(a.max()) if a.size else 0.0)              # = expo(t)
    a = a[a != 0]
    if not a.size:
        return e0
    best, best_err = e0, None
    s = np.empty_like(a)
    for e in range(e0, e0 - search - 1, -1):
        np.multiply(a, 2.0 ** -e, out=s)
        np.rint(s, out=s)                       # half to even, like torch.round
        np.minimum(s, 127, out=s)
        s *= 2.0 ** e
        s -= a
        s *= s
        err = float(s.sum())
        if best_err is None or err < best_err:
            best, best_err = e, err
    return best


def rshift_nearest(v: np.ndarray, s: int) -> np.ndarray:
    v = v.astype(np.int64)
    return v << -s if s <= 0 else (v + (1 << (s - 1))) >> s


def calibration_labels(n: int, k: int) -> torch.Tensor:
    return torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(0))


@dataclass
class QuantizePass:
    """Assign dtype/exp to every value, fuse relu into the producing conv/linear,
    choose shifts and stochastic-rounding tensor ids, compute initial integer data."""
    name = "quantize"
    example_input: torch.Tensor = None
    params: dict = field(default_factory=dict)      # param name -> float tensor
    headroom: dict = field(default_factory=dict)    # param name -> extra exponent bits
    dynamic: bool = False           # formats that follow the data (numerics.md section 8)
    abuf: int = 1 << 20             # accumulator buffer words: room for the exp tables

    def apply(self, g: Graph) -> Graph:
        x = self.example_input.float()
        N = x.shape[0]
        K = g.values[g.outputs["logits"]].shape[1]
        labels = calibration_labels(N, K)
        # --remaskable: formats independent of WHICH channels the mask keeps
        graphs = calibration_graphs(g) if g.meta.get("remaskable") else [g]
        runs = [run_float(c, x, labels, self.params) for c in graphs]
        fv = {k: torch.cat([r[k].reshape(-1) for r in runs]) if len(runs) > 1 else v
              for k, v in runs[0].items() if all(k in r for r in runs)}
        V = g.values
        V["x"].dtype, V["x"].exp = "i8", expo_fit(x)
        V["labels"].dtype, V["labels"].exp = "i32", 0
        for p in g.params.values():
            if not p.is_bias:
                V[p.value].dtype = "i8"
                V[p.value].exp = expo(self.params[p.name]) + self.headroom.get(p.name, 0)
        q = _Quantizing(self, g, fv, N, joint=joint_formats(g, fv, V["x"].exp))
        for n in list(g.nodes):
            if id(n) in q.fused:
                continue
            rule = QUANTIZE_RULES.get(n.op)
            if rule is None:
                raise EdgecError(f"quantize: unexpected op {n.op}")
            rule(q, n)
        for n in g.nodes:          # views take their parameter's format
            if n.op == "wview":
                V[n.outputs[0]].dtype = V[n.inputs[0]].dtype
                V[n.outputs[0]].exp = V[n.inputs[0]].exp
        for p in g.params.values():
            if V[p.value].exp is None:      # a bias of an op that was never quantized
                raise EdgecError(f"parameter {p.name!r} is not used by a conv/linear")
            if p.trainable or (self.dynamic and p.is_bias):   # dynamic: biases re-derived
                cshift, _ = copy_format(p)
                g.add_value(f"master:{p.name}", V[p.value].shape, "i32",
                            V[p.value].exp - cshift)
            V[p.value].dtype = "i8" if copy_format(p)[1] == 8 else "i32"
        g.meta["init"] = initial_data(g, self.params)
        g.meta["calib_exp"] = {"x": V["x"].exp}
        if self.dynamic:
            g.meta["dynamic"] = True
        check_reductions(g)
        return g

    @staticmethod
    def _act_exp(a: dict, v: torch.Tensor) -> int:
        """An activation's exponent: fit(v), a Hardtanh/ReLU6 output too (in a dynamic
        program its clamp bounds follow its exponent, ``dclamp``)."""
        return expo_fit(v)

    @staticmethod
    def _fuse_activation(g: Graph, n, fused: set) -> str:
        """Fold a sole relu/hardtanh user into ``n`` (attr ``act``); returns n's output."""
        V = g.values
        out = n.outputs[0]
        users = g.users(out)
        if len(users) == 1 and users[0].op in ACTIVATIONS:
            r = users[0]
            n.attrs["act"] = r
            fused.add(id(r))
            g.nodes.remove(r)
            del V[out]
            out = n.outputs[0] = r.outputs[0]
        return out

    @staticmethod
    def _src(g: Graph, v: str) -> str:
        """The parameter value behind a (possibly viewed) weight operand."""
        p = g.producer(v)
        return p.inputs[0] if p is not None and p.op == "wview" else v

    @staticmethod
    def _set(g: Graph, n, out: str, e_out: int, e_acc: int) -> None:
        shift = max(-31, min(31, e_out - e_acc))
        n.attrs["shift"] = shift
        g.values[out].dtype, g.values[out].exp = "i8", e_acc + shift


@dataclass
class _Quantizing:
    """The state the quantize rules share while they walk the graph in order."""
    qp: "QuantizePass"
    g: Graph
    fv: dict                        # float calibration value of every graph value
    N: int                          # batch size
    tid: int = 0                    # last stochastic-rounding tensor id handed out
    fused: set = field(default_factory=set)     # ids of activations folded into a producer
    joint: dict = field(default_factory=dict)   # value -> the exponent its concat group shares

    def e(self, v: str) -> int:
        return self.g.values[v].exp

    def out_exp(self, v: str, free: int) -> int:
        """The exponent of ``v``'s producer output: its concat group's, else ``free``."""
        return self.joint.get(v, free)

    def next_tid(self) -> int:
        self.tid += 1
        return self.tid


def _q_mac_forward_or_add(q: _Quantizing, n) -> None:
    """conv / linear / add: fuse a sole activation user, then the output format and shift."""
    g, V, a, ins, e = q.g, q.g.values, n.attrs, n.inputs, q.e
    out = QuantizePass._fuse_activation(g, n, q.fused)
    act = a.get("act")
    if q.qp.dynamic and act is not None and act.op == "hardtanh":
        a["act_real"] = _real_bounds(act)
    if n.op == "add":
        ea, eb = e(ins[0]), e(ins[1])
        m = min(ea, eb)
        if max(ea, eb) - m > 31:
            raise EdgecError(f"{n.loc or '?'}: layer {n.layer!r} (add): operand "
                             f"scales 2^{ea} and 2^{eb} are too far apart")
        a["sa"], a["sb"] = ea - m, eb - m
        if a["grad"]:
            a["tid"] = q.next_tid()
        QuantizePass._set(g, n, out, q.out_exp(out, QuantizePass._act_exp(a, q.fv[out])), m)
    else:
        w_exp = V[QuantizePass._src(g, ins[1])].exp
        e_acc = e(ins[0]) + w_exp
        if len(ins) == 3:
            bp = g.param_of_value(QuantizePass._src(g, ins[2]))
            V[bp.value].dtype, V[bp.value].exp = "i32", e_acc
        QuantizePass._set(g, n, out, q.out_exp(out, QuantizePass._act_exp(a, q.fv[out])),
                          e_acc)
    act = a.pop("act", None)
    a["clamp"] = clamp_bounds(act, V[out].exp)
    if "act_real" in a:
        a["dclamp"] = dynamic_clamp(a["act_real"], V[out].exp)
        a["clamp"] = clamp_at(a["dclamp"], V[out].exp)


def _q_activation(q: _Quantizing, n) -> None:
    """A standalone relu / hardtanh: int8 at its input's exponent, integer clamp bounds."""
    V, a, e, ins = q.g.values, n.attrs, q.e, n.inputs
    V[n.outputs[0]].dtype, V[n.outputs[0]].exp = "i8", e(ins[0])
    a["clamp"] = clamp_bounds(n, e(ins[0]))
    if q.qp.dynamic and n.op == "hardtanh":
        a["dclamp"] = dynamic_clamp(_real_bounds(n), e(ins[0]))
        a["clamp"] = clamp_at(a["dclamp"], e(ins[0]))


def _q_same_format(q: _Quantizing, n) -> None:
    """maxpool / reshape / maxpool_bwd: int8 at input 0's exponent."""
    V = q.g.values
    V[n.outputs[0]].dtype, V[n.outputs[0]].exp = "i8", q.e(n.inputs[0])


def _q_relu_bwd(q: _Quantizing, n) -> None:
    _q_same_format(q, n)
    n.attrs["pass_range"] = (0, 128)


def _q_hardtanh_bwd(q: _Quantizing, n) -> None:
    _q_same_format(q, n)
    a, e, ins = n.attrs, q.e, n.inputs
    a["pass_range"] = clamp_bounds(n, e(ins[1]))
    if q.qp.dynamic:
        a["dclamp"] = dynamic_clamp(_real_bounds(n), e(ins[1]))
        a["pass_range"] = pass_range_at(a["dclamp"], e(ins[1]))


def _q_loss_grad(q: _Quantizing, n) -> None:
    """The loss gradient's fixed-point constants and its exp table(s)."""
    g, V, a, e, ins, N = q.g, q.g.values, n.attrs, q.e, n.inputs, q.N
    e_dz = expo(torch.tensor(1.0 / N))      # |dz| <= 1/N
    a["rmul"] = round(2**16 / N)
    a["shift"] = 31 + e_dz
    temp = float(a.get("temp", 1.0))      # kd: both softmaxes at T
    a["lut"] = "lut:softmax"
    teacher = a.get("target", "labels") != "labels"
    # dynamic: one table per exponent the logits can reach, as many as the
    # loss's ABUF (labels or the teacher's table beside them) holds
    span = min(SPAN, ((q.qp.abuf - (256 if teacher else N)) // 256 - 1) // 2)
    if q.qp.dynamic and span > 0:
        a["lut_lo"], a["nlut"] = e(ins[0]) - span, 2 * span + 1
        g.consts["lut:softmax"] = [v for d in range(-span, span + 1)
                                   for v in exp_lut(e(ins[0]) + d, temp)]
    else:
        g.consts["lut:softmax"] = exp_lut(e(ins[0]), temp)
    if teacher:     # a teacher's logits
        a["tlut"] = "lut:teacher"
        g.consts["lut:teacher"] = exp_lut(e(ins[1]), temp)
        if a["target"] == "pseudo":
            a["thresh"] = int(np.rint(float(a["threshold"]) * 2**15))
    V[n.outputs[0]].dtype, V[n.outputs[0]].exp = "i8", e_dz


def _q_backward_reduction(q: _Quantizing, n) -> None:
    """EB / WG / bias_grad: a stochastic-rounding tensor id, the accumulator exponent and
    the output format."""
    g, V, a, e, ins, out = q.g, q.g.values, n.attrs, q.e, n.inputs, n.outputs[0]
    a["tid"] = q.next_tid()
    if n.op == "bias_grad":
        e_acc = e(ins[0])
    elif n.op in MAC_EB:
        e_acc = e(ins[0]) + V[QuantizePass._src(g, ins[1])].exp
    else:
        e_acc = e(ins[0]) + e(ins[1])
    # dynamic: gradients get their full calibrated range and one bit of
    # headroom (the rule coarsens them further at a saturation); errors trade
    # outliers like activations
    grad = q.qp.dynamic and n.op in GRADIENTS
    e_out = expo(q.fv[out]) + GRAD_HEADROOM if grad else q.out_exp(out, expo_fit(q.fv[out]))
    QuantizePass._set(g, n, out, e_out, e_acc)


def _q_chmul(q: _Quantizing, n) -> None:
    """chmul (x * s) / chmul_ds (sum dy * x): the product's exponent e_a + e_b, the output
    format and shift; an error (chmul with grad, chmul_ds) gets a stochastic tensor id."""
    g, a, out = q.g, n.attrs, n.outputs[0]
    if n.op == "chmul_ds" or a["grad"]:
        a["tid"] = q.next_tid()
    QuantizePass._set(g, n, out, q.out_exp(out, expo_fit(q.fv[out])),
                      q.e(n.inputs[0]) + q.e(n.inputs[1]))
    if n.op == "chmul":
        a["clamp"] = (-127, 127)


def _q_channels(q: _Quantizing, n) -> None:
    """concat / slice: a copy; every operand already has the group's shared format."""
    V = q.g.values
    es = {q.e(v) for v in n.inputs}
    if len(es) != 1:        # a producer's shift could not reach the shared scale
        raise EdgecError(f"{n.loc or '?'}: layer {n.layer!r} ({n.op}): its operands are at "
                         f"scales {', '.join(f'2^{e}' for e in sorted(es))}; tensors that "
                         "meet at a concat share one scale, which one of their producers "
                         "cannot reach with a shift in [-31, 31]")
    V[n.outputs[0]].dtype, V[n.outputs[0]].exp = "i8", es.pop()


def joint_formats(g: Graph, fv: dict, e_x: int) -> dict[str, int]:
    """value -> exponent, for the values that must share one format because they meet at
    a concat (its operands and output, and every value tied to one of them through a
    same-format op: a slice, a pool, an activation, a reshape): ``fit`` of all their
    calibration values together (numerics.md section 6), or the input's exponent when the
    group holds the input ``x``.  Empty without concats: nothing else changes."""
    if not any(n.op in CHANNEL_OPS for n in g.nodes):
        return {}
    parent: dict[str, str] = {}

    def find(v):
        while parent.setdefault(v, v) != v:
            v = parent[v]
        return v
    for n in g.nodes:
        if n.op in SAME_FORMAT and n.op != "wview":     # concat: every operand
            for v in n.inputs if n.op == "concat" else n.inputs[:1]:
                parent[find(v)] = find(n.outputs[0])
    groups: dict[str, list[str]] = {}
    for n in g.nodes:
        if n.op == "concat":
            groups.setdefault(find(n.outputs[0]), [])
    for v in parent:
        if find(v) in groups:
            groups[find(v)].append(v)
    out = {}
    for members in groups.values():
        if "x" in members:
            e = e_x
        else:
            vals = [fv[v].reshape(-1) for v in members if v in fv]
            e = expo_fit(torch.cat(vals))
        out.update({v: e for v in members})
    return out


#: one rule per op of the graph the quantize pass sees (op registry stage ``quantize``);
#: a view takes its parameter's format after the walk (QuantizePass.apply)
QUANTIZE_RULES = {
    "conv": _q_mac_forward_or_add,
    "linear": _q_mac_forward_or_add,
    "add": _q_mac_forward_or_add,
    "relu": _q_activation,
    "hardtanh": _q_activation,
    "maxpool": _q_same_format,
    "reshape": _q_same_format,
    "concat": _q_channels, "slice": _q_channels,
    "chmul": _q_chmul, "chmul_ds": _q_chmul,
    "maxpool_bwd": _q_same_format,
    "relu_bwd": _q_relu_bwd,
    "hardtanh_bwd": _q_hardtanh_bwd,
    "loss_grad": _q_loss_grad,
    "conv_eb": _q_backward_reduction,
    "linear_eb": _q_backward_reduction,
    "conv_wg": _q_backward_reduction,
    "linear_wg": _q_backward_reduction,
    "bias_grad": _q_backward_reduction,
    "wview": lambda q, n: None,
}


def exp_lut(e_z: int, temp: float = 1.0) -> list[int]:
    """``LUT[d] = round_half_even(2**15 * exp(-d * 2**e_z / temp))``, d = 0..255: the
    softmax's exp table for int8 logits at exponent ``e_z`` (docs/numerics.md)."""
    return [int(np.round(2**15 * math.exp(-d * 2.0**e_z / temp))) for d in range(256)]


def clamp_bounds(act, e: int) -> tuple[int, int]:
    """Integer (lo, hi) of an activation node (relu/hardtanh, or None) on an output at
    exponent ``e`` (docs/numerics.md, clamp)."""
    if act is None:
        return (-127, 127)
    if act.op == "relu":
        return (0, 127)
    lo = int(np.rint(float(act.attrs["lo"]) * 2.0 ** -e))
    hi = int(np.rint(float(act.attrs["hi"]) * 2.0 ** -e))
    return (max(-127, min(127, lo)), max(-127, min(127, hi)))


def _real_bounds(act) -> list[float]:
    return [float(act.attrs["lo"]), float(act.attrs["hi"])]


DCLAMP_BITS = 16        # RQ/VADD/VMASK fields clo, chi


def dynamic_clamp(bounds, e: int) -> tuple[int, int, int]:
    """(clo, chi, ce) of a Hardtanh/ReLU6 in a dynamic program whose output starts at
    exponent ``e`` (docs/numerics.md section 8): the real bounds in units of 2**ce, ce =
    e - SPAN (the finest exponent the register can reach), saturated to 16 bits (a bound
    that does not fit is beyond int8 at every reachable exponent anyway)."""
    ce = e - SPAN
    lim = 2 ** (DCLAMP_BITS - 1) - 1
    lo, hi = (max(-lim, min(lim, int(np.rint(b * 2.0 ** -ce)))) for b in bounds)
    return lo, hi, ce


def dynamic_bounds(dclamp, e: int) -> tuple[int, int]:
    """The bounds of ``dclamp`` in integer units of exponent ``e``, not limited to int8:
    rshift(c, e - ce, nearest)."""
    clo, chi, ce = dclamp
    k = e - ce
    half = (1 << (k - 1)) if k > 0 else 0
    return (clo + half) >> k, (chi + half) >> k


def clamp_at(dclamp, e: int) -> tuple[int, int]:
    lo, hi = dynamic_bounds(dclamp, e)
    return max(lo, -127), min(hi, 127)


def pass_range_at(dclamp, e: int) -> tuple[int, int]:
    lo, hi = dynamic_bounds(dclamp, e)
    return (lo if lo >= -127 else -128), (hi if hi <= 127 else 128)


def copy_format(p) -> tuple[int, int]:
    """(cshift, cbits) of a parameter: master -> compute copy shift and copy width."""
    return (8, BIAS_BITS) if p.is_bias else (16, 8)


def initial_data(g: Graph, params: dict) -> dict[str, np.ndarray]:
    """Initial compute copies of every parameter and masters of the trainable ones
    (docs/numerics.md section 6): M = clamp(rhe(w * 2**-e_master)), C = rshift(M, cshift)."""
    V = g.values
    init = {}
    for p in g.params.values():
        cshift, cbits = copy_format(p)
        master = V.get(f"master:{p.name}")
        if V[p.value].exp is None or (p.trainable and (master is None or master.exp is None)):
            raise EdgecError(f"parameter {p.name!r} has no fixed-point format")
        e_m = master.exp if master is not None else V[p.value].exp - cshift
        w = params[p.name].detach().double().numpy().reshape(V[p.value].shape)
        bound = ((1 << (cbits - 1)) - 1) << cshift
        m = np.clip(np.rint(w * 2.0 ** (-e_m)), -bound, bound).astype(np.int64)
        if master is not None:
            init[f"master:{p.name}"] = m.astype(np.int32)
        init[p.value] = rshift_nearest(m, cshift).astype(np.int32 if cbits > 8 else np.int8)
        if f"mom:{p.name}" in V:            # momentum buffer (--momentum): starts at zero
            init[f"mom:{p.name}"] = np.zeros(V[p.value].shape, np.int32)
    return init


def check_reductions(g: Graph) -> None:
    """Prove no int32 partial sum can overflow, whatever the tiling (numerics.md 6)."""
    V = g.values
    for n in g.nodes:
        s = [V[v].shape for v in n.inputs]
        if n.op in MAC_FORWARD:
            k = s[1][1] * (s[1][2] * s[1][3] if n.op == "conv" else 1)
            bound = k * 127 * 127 + (2**(BIAS_BITS - 1) - 1)
        elif n.op in MAC_EB:
            if n.op == "conv_eb":
                kh, kw = s[1][2], s[1][3]
                sh, sw = n.attrs["stride"]
                k = (s[1][0] // n.attrs.get("groups", 1)) * math.ceil(kh / sh) \
                    * math.ceil(kw / sw)
            else:
                k = s[1][0]
            bound = k * 127 * 127
        elif n.op in MAC_WG:
            k = 1
            for d in (s[0][0], *s[0][2:]):
                k *= d
            bound = k * 127 * 127
        elif n.op == "bias_grad":
            k = 1
            for d in (s[0][0], *s[0][2:]):
                k *= d
            bound = k * 127
        elif n.op == "chmul_ds":            # sum over H, W of int8 x int8 products
            k = 1
            for d in s[0][2:]:
                k *= d
            bound = k * 127 * 127
        else:
            continue
        if bound > ACC_MAX:
            raise EdgecError(f"{n.loc or '?'}: layer {n.layer!r} ({n.op}): a reduction of "
                             f"{k} int8 products can overflow the int32 accumulator; "
                             "reduce the batch or the layer size (splitting reductions is "
                             "not supported yet)")


def lr_fixed(lr: float, de: int, top: int = 31) -> tuple[int | None, int]:
    """(lrshift, lrmul): lr * 2**de ~= lrmul / 2**lrshift with the most precision in int32
    and lrshift <= top."""
    for sh in range(top, -1, -1):
        m = int(np.rint(lr * 2.0 ** (de + sh)))
        if -2**31 <= m < 2**31:
            return sh, m
    return None, 0


@dataclass
class UpdatePass:
    """Append one SGD node per trainable parameter, writing through its mask view."""
    name = "update"
    lr: float = 0.01
    dynamic: bool = False           # leave room for the gradient's exponent to move
    momentum: float = 0.0           # torch.optim.SGD momentum (dampening 0, no nesterov)
    weight_decay: float = 0.0       # torch.optim.SGD weight_decay (L2 added to the gradient)

    def _mom_attrs(self) -> dict:
        """Fixed-point momentum and weight decay (numerics.md section 4): mu ~ mumul /
        2^MU_SHIFT, lr * wd ~ wdmul / 2^wdshift; {} without either (today's program)."""
        mu, wd = float(self.momentum), float(self.weight_decay)
        if not (0.0 <= mu < 1.0) or not math.isfinite(mu):
            raise EdgecError(f"--momentum {mu}: need 0 <= momentum < 1")
        if not (wd >= 0.0) or not math.isfinite(wd):
            raise EdgecError(f"--weight-decay {wd}: need a weight decay >= 0")
        if mu == 0.0 and wd == 0.0:
            return {}
        wdshift, wdmul = lr_fixed(self.lr * wd, 0, 31) if wd else (0, 0)
        if wdshift is None:
            raise EdgecError(f"--weight-decay {wd} with --lr {self.lr}: lr * wd is too large")
        return {"mom": True, "momentum": mu, "weight_decay": wd,
                "mumul": int(round(mu * 2**MU_SHIFT)), "mushift": MU_SHIFT,
                "wdmul": int(wdmul), "wdshift": int(wdshift)}

    def apply(self, g: Graph) -> Graph:
        V = g.values
        mom = self._mom_attrs()
        for p in g.params.values():
            master = f"master:{p.name}"
            if not p.trainable and master in V:     # dynamic: a frozen bias, re-derived
                self._rederive(g, p)
            if not p.trainable:
                continue
            grad = g.outputs[f"grad:{p.name}"]
            va = self._view(g, p)
            cshift, cbits = copy_format(p)
            lrshift, lrmul = lr_fixed(self.lr, V[grad].exp - V[master].exp,
                                      31 - SPAN if self.dynamic else 31)
            if lrshift is None:
                loc = next((n.loc for n in g.nodes if p.value in n.inputs and n.loc), "?")
                raise EdgecError(f"{loc}: layer {p.module!r}: learning rate {self.lr} is too "
                                 f"large for {p.name!r}: one gradient step would move the "
                                 "weight by more than its range (use a smaller --lr)")
            newp, newm = f"new:{p.name}", f"newmaster:{p.name}"
            g.add_value(newp, V[p.value].shape, V[p.value].dtype, V[p.value].exp)
            g.add_value(newm, V[p.value].shape, "i32", V[master].exp)
            ins, outs = [p.value, master, grad], [newp, newm]
            if mom:     # the momentum buffer: int32 at the master's exponent, zero at first
                vm, newv = f"mom:{p.name}", f"newmom:{p.name}"
                g.add_value(vm, V[p.value].shape, "i32", V[master].exp)
                g.add_value(newv, V[p.value].shape, "i32", V[master].exp)
                g.meta.setdefault("init", {})[vm] = np.zeros(V[p.value].shape, np.int32)
                ins, outs = ins + [vm], outs + [newv]
            g.add_node("sgd", ins, outs,
                       {"lr": self.lr, "lrmul": lrmul, "lrshift": lrshift, "cshift": cshift, "cbits": cbits,
                        **mom,
                        **{k: va[k] for k in ("out_idx", "in_idx", "in_block", "out_tab",
                                              "in_tab")}},
                       layer=p.module, loc=next((n.loc for n in g.nodes
                                                  if p.value in n.inputs), None))
        return g

    @staticmethod
    def _view(g: Graph, p) -> dict:
        view = next((n for n in g.nodes if n.op == "wview" and n.inputs[0] == p.value), None)
        return view.attrs if view else {"out_idx": None, "in_idx": None, "in_block": 1,
                                        "out_tab": None, "in_tab": None}

    def _rederive(self, g: Graph, p) -> None:
        """An sgd without a gradient (attr ng): the frozen bias's compute copy re-derived
        from its master at the step's new exponents."""
        V, va = g.values, self._view(g, p)
        cshift, cbits = copy_format(p)
        newp, newm = f"new:{p.name}", f"newmaster:{p.name}"
        g.add_value(newp, V[p.value].shape, V[p.value].dtype, V[p.value].exp)
        g.add_value(newm, V[p.value].shape, "i32", V[f"master:{p.name}"].exp)
        g.add_node("sgd", [p.value, f"master:{p.name}"], [newp, newm],
                   {"lr": 0.0, "lrmul": 0, "lrshift": 0, "cshift": cshift, "cbits": cbits,
                    "ng": True, **{k: va[k] for k in ("out_idx", "in_idx", "in_block",
                                                      "out_tab", "in_tab")}},
                   layer=p.module, loc=next((n.loc for n in g.nodes if p.value in n.inputs),
                                            None))
