"""Float32 interpreter for a float edgec graph (torch, no autograd).

``run_float`` evaluates every node in order and returns every value by name: inputs,
parameters (``param:<name>``) and all node outputs.  ``wview``/``sgd`` follow the view
semantics of graph.py so that masked graphs evaluate too.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from edgec.compiler.ir.graph import Graph, Node
from edgec.compiler.ir.ops import REGISTRY


def _loss_grad(z: torch.Tensor, y: torch.Tensor, at: dict) -> torch.Tensor:
    """d(mean loss)/dz: labels, or a teacher's logits ``y`` (attr target pseudo | kd)."""
    target, n_ = at.get("target", "labels"), z.shape[0]
    if target == "kd":
        T = float(at["temp"])
        return (torch.softmax(z / T, dim=1) - torch.softmax(y / T, dim=1)) / n_
    if target == "pseudo":
        pt = torch.softmax(y, dim=1)
        keep = (pt.max(dim=1).values >= float(at["threshold"])).to(z.dtype)[:, None]
        onehot = F.one_hot(pt.argmax(dim=1), z.shape[1]).to(z.dtype)
        return (torch.softmax(z, dim=1) - onehot) * keep / n_
    onehot = F.one_hot(y.long(), z.shape[1]).to(z.dtype)
    return (torch.softmax(z, dim=1) - onehot) / n_


def _view_index(p: torch.Tensor, attrs) -> tuple:
    """Advanced index selecting the wview of ``p`` (rows out_idx, dim-1 blocks in_idx)."""
    out_idx, in_idx = attrs.get("out_idx"), attrs.get("in_idx")
    in_block = int(attrs.get("in_block") or 1)
    rows = (torch.arange(p.shape[0]) if out_idx is None
            else torch.as_tensor(list(out_idx), dtype=torch.long))
    if p.dim() == 1:
        if in_idx is not None:
            raise ValueError("wview of a 1-D parameter cannot select in_idx")
        return (rows,)
    if in_idx is None:
        cols = torch.arange(p.shape[1])
    else:
        blocks = torch.as_tensor(list(in_idx), dtype=torch.long)
        cols = (blocks[:, None] * in_block + torch.arange(in_block)[None, :]).reshape(-1)
    return (rows[:, None], cols[None, :])


def _grp(at) -> int:
    return int(at.get("groups", 1))


def _conv(a, at):
    return F.conv2d(a[0], a[1], a[2] if len(a) > 2 else None,
                    stride=tuple(at["stride"]), padding=tuple(at["pad"]), groups=_grp(at))


def _hardtanh_bwd(a, at):
    dy, y = a
    inside = (y > float(at["lo"])) & (y < float(at["hi"]))
    return torch.where(inside, dy, torch.zeros_like(dy))


def _conv_eb(a, at):
    return torch.nn.grad.conv2d_input(tuple(at["in_shape"]), a[1], a[0],
                                      stride=tuple(at["stride"]), padding=tuple(at["pad"]),
                                      groups=_grp(at))


def _conv_wg(a, at):
    dy, x = a
    grp = _grp(at)
    wshape = (dy.shape[1], x.shape[1] // grp, *at["kernel"])
    return torch.nn.grad.conv2d_weight(x, wshape, dy, stride=tuple(at["stride"]),
                                       padding=tuple(at["pad"]), groups=grp)


def _bias_grad(a, at):
    dims = [d for d in range(a[0].dim()) if d != 1]
    return a[0].sum(dim=dims)


def _relu_bwd(a, at):
    dy, y = a
    return torch.where(y > 0, dy, torch.zeros_like(dy))


def _maxpool_bwd(a, at):
    dy, x = a
    k, s, p = tuple(at["kernel"]), tuple(at["stride"]), tuple(at["pad"])
    _, idx = F.max_pool2d(x, k, s, p, return_indices=True)
    return torch.ops.aten.max_pool2d_with_indices_backward(
        dy, x, list(k), list(s), list(p), [1, 1], False, idx)


def _sgd(a, at):
    if len(a) != 2:
        raise ValueError("run_float: sgd on a float graph takes (p, g)")
    p, g = a
    out = p.clone()
    ix = _view_index(p, at)
    out[ix] = p[ix] - float(at["lr"]) * g.reshape(p[ix].shape)
    return out


#: one rule per op of a float graph (op registry stage ``float``): (inputs, attrs) -> output
FLOAT_RULES = {
    "conv": _conv,
    "linear": lambda a, at: F.linear(a[0], a[1], a[2] if len(a) > 2 else None),
    "relu": lambda a, at: torch.relu(a[0]),
    "hardtanh": lambda a, at: F.hardtanh(a[0], float(at["lo"]), float(at["hi"])),
    "add": lambda a, at: a[0] + a[1],
    "hardtanh_bwd": _hardtanh_bwd,
    "maxpool": lambda a, at: F.max_pool2d(a[0], tuple(at["kernel"]), tuple(at["stride"]),
                                          tuple(at["pad"])),
    "reshape": lambda a, at: a[0].reshape(tuple(at["shape"])),
    "concat": lambda a, at: torch.cat(list(a), dim=1),
    "chmul": lambda a, at: a[0] * a[1],
    "chmul_ds": lambda a, at: (a[0] * a[1]).sum(dim=tuple(range(2, a[0].dim())), keepdim=True),
    "slice": lambda a, at: a[0][:, int(at["c0"]):int(at["c1"])],
    "loss_grad": lambda a, at: _loss_grad(a[0], a[1], at),
    "conv_eb": _conv_eb,
    "conv_wg": _conv_wg,
    "linear_eb": lambda a, at: a[0] @ a[1],
    "linear_wg": lambda a, at: a[0].t() @ a[1],
    "bias_grad": _bias_grad,
    "relu_bwd": _relu_bwd,
    "maxpool_bwd": _maxpool_bwd,
    "wview": lambda a, at: a[0][_view_index(a[0], at)],
    "sgd": _sgd,
}


def eval_node(n: Node, a: list[torch.Tensor]):
    """One node of the float graph on float tensors (autograd-able)."""
    rule = FLOAT_RULES.get(n.op)
    if rule is None:
        raise ValueError(f"run_float: op {n.op!r} is not a float op")
    return rule(a, n.attrs)


def run_float(graph: Graph, x: torch.Tensor, labels: torch.Tensor,
              params: dict[str, torch.Tensor],
              round_forward: dict[str, int] | None = None) -> dict[str, torch.Tensor]:
    """Evaluate ``graph`` in float32; returns every value (name -> tensor).
    ``round_forward`` {value: exponent e}: each of those values produced before the loss
    gradient is rounded to the int8 grid ``clamp(round(v * 2**-e), -127, 127) * 2**e``
    (the int8-forward floor of compiler/workflows/fidelity.py); the rest stays float."""
    round_forward = round_forward or {}
    forward = True
    env: dict[str, torch.Tensor] = {}
    env[graph.inputs[0]] = torch.as_tensor(x).to(torch.float32)
    env[graph.inputs[1]] = torch.as_tensor(labels).to(torch.long)
    for name, p in graph.params.items():
        if name not in params:
            raise KeyError(f"run_float: no value for parameter {name!r}")
        env[p.value] = torch.as_tensor(params[name]).detach().to(torch.float32).reshape(
            graph.values[p.value].shape)
    with torch.no_grad():
        for n in graph.nodes:
            res = eval_node(n, [env[i] for i in n.inputs])
            if len(n.outputs) != 1:
                raise ValueError(f"run_float: {n.op} with {len(n.outputs)} outputs")
            forward = forward and REGISTRY[n.op].phase != "loss"
            e = round_forward.get(n.outputs[0]) if forward else None
            if e is not None:
                s = 2.0 ** e
                res = torch.clamp(torch.round(res / s), -127, 127) * s
            env[n.outputs[0]] = res
    return env
