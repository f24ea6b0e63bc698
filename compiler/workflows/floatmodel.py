"""The float counterparts of a compiled program, shared by the workflows: the user's masked
(pruned) model in float32, its loss (labels or a teacher target) and autograd gradients, the
state_dict of the pruned model, the class-subset mapping, and the comparison metric."""
from __future__ import annotations

import copy
from collections import OrderedDict

import numpy as np
import torch

from ..driver import Compiled


def quantize_input(x: torch.Tensor, exp: int) -> torch.Tensor:
    return torch.clamp(torch.round(x.double() * 2.0 ** (-exp)), -127, 127).to(torch.int64)


def pruned_channels(c: Compiled) -> dict[str, list[int]]:
    """{module: kept output channels} for every module whose output a mask prunes: the
    masked Conv2d/Linear layers and the BatchNorm / depthwise convs that follow them."""
    modules = dict(c.model.named_modules())
    logits_layer = c.graph.producer(c.graph.outputs["logits"]).layer
    out = {layer: list(kept) for layer, kept in c.mask.items() if layer != logits_layer}
    for n in c.graph.nodes:          # BN / depthwise convs whose rows follow a mask
        w = c.graph.producer(n.inputs[1]) if n.op == "conv" else None
        if w is not None and w.op == "wview" and w.attrs.get("out_tab") \
                and n.layer != w.attrs["out_tab"] and isinstance(
                    modules.get(n.layer), (torch.nn.Conv2d, torch.nn.BatchNorm2d)):
            tab = w.attrs["out_tab"]        # a layer's kept list, or a concat's derived one
            out[n.layer] = list(c.graph.meta.get("tables", {}).get(tab) or c.mask[tab])
    return out


def subset_labels(c: Compiled, y: torch.Tensor) -> torch.Tensor:
    """Original class ids -> positions in a class-subset program's logits."""
    ids = c.graph.meta.get("class_ids")
    return y if ids is None else torch.as_tensor([ids.index(int(v)) for v in y],
                                                 dtype=torch.long)


def subset_logits(c: Compiled, z: torch.Tensor) -> torch.Tensor:
    """The logits a class-subset program computes: the columns of its classes."""
    ids = c.graph.meta.get("class_ids")
    return z if ids is None else z[:, list(ids)]


def prune_state_dict(c: Compiled, state_dict: dict) -> dict:
    """A copy of ``state_dict`` in which every pruned channel outputs exactly zero (its
    weight rows, bias, BatchNorm weight and bias set to 0): the user's pruned model, which
    computes in float what the device computes."""
    sd = {k: v.clone() for k, v in state_dict.items()}
    for name, kept in pruned_channels(c).items():
        for leaf in ("weight", "bias"):
            t = sd.get(f"{name}.{leaf}" if name else leaf)
            if t is not None:
                drop = torch.ones(t.shape[0], dtype=torch.bool)
                drop[kept] = False
                t[drop] = 0
    return OrderedDict(sd)


def masked_float_model(c: Compiled, model: torch.nn.Module | None = None) -> torch.nn.Module:
    """A float32 copy of ``model`` (default: the compiled model) computing the masked model:
    the outputs of the masked layers AND of the BatchNorm and depthwise modules whose
    channels follow them are zeroed in the pruned channels (forward hooks), so a pruned
    channel is zero everywhere downstream and its parameters get zero gradient."""
    model = copy.deepcopy(c.model if model is None else model).float()
    modules = dict(model.named_modules())
    for name, kept in pruned_channels(c).items():
        mod = modules[name]
        m = torch.zeros(mod.num_features if isinstance(mod, torch.nn.BatchNorm2d)
                        else mod.weight.shape[0])
        m[kept] = 1.0

        def hook(_mod, _inp, out, m=m):
            return out * m.view(1, -1, *([1] * (out.dim() - 2)))
        modules[name].register_forward_hook(hook)
    return model


def float_loss(c: Compiled, z: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The float32 loss the program's step descends, of logits ``z`` of the masked model:
    mean cross-entropy with the labels ``y``, or with a teacher target (the unmasked
    pretrained model with the teacher's BatchNorm statistics, float32): pseudo labels (teacher argmax, samples whose teacher
    confidence is below the threshold weigh 0, mean over all N) or distillation
    ``T * mean_n CE(softmax(t/T), softmax(z/T))`` (gradient ``(softmax(z/T) -
    softmax(t/T)) / N``)."""
    F = torch.nn.functional
    t = c.graph.meta.get("teacher")
    if not t:
        return F.cross_entropy(subset_logits(c, z), subset_labels(c, y))
    teacher = c.teacher_model if c.teacher_model is not None else c.model
    with torch.no_grad():
        zt = copy.deepcopy(teacher).float().eval()(x)
    return teacher_target_loss(z, zt, t["target"], t.get("threshold"), t.get("temp"))


def teacher_target_loss(z: torch.Tensor, t: torch.Tensor, kind: str, threshold=None,
                        temp=None) -> torch.Tensor:
    """The float loss of logits ``z`` against a teacher's logits ``t``: pseudo labels (its
    first argmax; rows below the confidence ``threshold`` weigh 0, mean over all N) or
    distillation ``T * mean_n CE(softmax(t/T), softmax(z/T))`` (kd, T = ``temp``)."""
    F = torch.nn.functional
    t = t.detach()
    if kind == "pseudo":
        pt = torch.softmax(t, dim=1)
        keep = (pt.max(dim=1).values >= float(threshold)).to(z.dtype)
        return (F.cross_entropy(z, pt.argmax(dim=1), reduction="none") * keep).mean()
    T = float(temp)
    return T * -(torch.softmax(t / T, dim=1) * F.log_softmax(z / T, dim=1)).sum(1).mean()


def float_grads(c: Compiled, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Float32 autograd of the same step on the masked model (masked_float_model)."""
    model = masked_float_model(c)
    model.zero_grad()
    float_loss(c, model(x), x, y).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()
            if p.grad is not None}


def cosine_rel(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    cos = float(a @ b / (na * nb)) if na > 0 and nb > 0 else float(na == nb)
    rel = float(np.linalg.norm(a - b) / nb) if nb > 0 else float(na)
    return cos, rel
