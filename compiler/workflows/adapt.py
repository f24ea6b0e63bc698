"""`edgec finetune --adapt-bn`: BatchNorm adaptation on unlabeled user data, on the device.

The adapt-bn program (compile_model(..., adapt_bn=True); compiler/passes/adapt_bn.py) runs
the forward pass on one batch and moves every BatchNorm's frozen statistics toward that
batch's (docs/numerics.md, "BatchNorm adaptation").  One emulator Machine runs `steps`
batches (rows cycle through the data as in finetune), so the constants stay in emulator
DDR between runs; the adapted running_mean/running_var are read back from them.
"""
from __future__ import annotations

import copy
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from edgec.isa.errors import EdgecError

from .finetune import batch_rows
from .floatmodel import prune_state_dict


@dataclass
class AdaptResult:
    state_dict: OrderedDict             # the model's, with the adapted BN statistics
    stats: dict[str, tuple[np.ndarray, np.ndarray]]   # BN module -> (mean, var)
    seconds: float


def _adapt_nodes(c) -> dict:
    """BatchNorm module -> its bn_adapt node."""
    return {n.layer: n for n in c.graph.nodes if n.op == "bn_adapt"}


def float_adapted(c, x: torch.Tensor) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The float32 counterpart of one adapt-bn run on batch x: each BatchNorm's input
    statistics in the masked model's eval-mode forward (population variance), and the
    constants moved 2^-m of the way toward them, returned as (running_mean, running_var)."""
    from .floatmodel import masked_float_model
    model = masked_float_model(c).eval()
    seen = {}
    for b in c.program.meta["adapt_bn"]:
        def hook(_mod, inp, _out, name=b["module"]):
            t = inp[0].detach().double().transpose(0, 1).reshape(inp[0].shape[1], -1)
            seen[name] = (t.mean(1), t.var(1, unbiased=False))
        model.get_submodule(b["module"]).register_forward_hook(hook)
    with torch.no_grad():
        model(x.float())
    node = _adapt_nodes(c)
    res = {}
    for b in c.program.meta["adapt_bn"]:
        bn = c.model.get_submodule(b["module"])
        mu_b, var_b = seen[b["module"]]
        mean, var = bn.running_mean.double(), bn.running_var.double()
        eps, k = float(b["eps"]), 2.0 ** -node[b["module"]].attrs["m"]
        s, s_b = 1 / torch.sqrt(var + eps), 1 / torch.sqrt(var_b + eps)
        s_new = s + (s_b - s) * k
        if b["mode"] == 0:
            mean_new = mean + (mu_b - mean) * k
        else:
            mean_new = -(-mean * s + (-mu_b * s_b + mean * s) * k) / s_new
        res[b["module"]] = (mean_new.numpy(), (1 / s_new**2 - eps).numpy())
    return res


def adapt_fidelity(c, x: torch.Tensor, out: dict) -> list[tuple[str, float, float]]:
    """(name, cosine, relative error) of the emulator's adapted running statistics vs
    float_adapted, over each BatchNorm's kept channels."""
    from .floatmodel import cosine_rel
    want = float_adapted(c, x)
    node = _adapt_nodes(c)
    rows = []
    for mod, (mean, var) in want.items():
        kept = node[mod].attrs["out_idx"]
        sel = slice(None) if kept is None else list(kept)
        for stat, w in (("running_mean", mean), ("running_var", var)):
            got = out[f"bn/{mod}.{stat}"]
            rows.append((f"{mod}.{stat}", *cosine_rel(got[sel], w[sel])))
    return rows


def adapt_bn(compiled, x: np.ndarray, steps: int, log=None) -> AdaptResult:
    """Run the adapt-bn program on `steps` batches of x; return the adapted state_dict."""
    from edgec.runtime_emu.host import Session
    log = log or (lambda line: None)
    prog = compiled.program
    if "adapt_bn" not in prog.meta:
        raise EdgecError("the program was not compiled with --adapt-bn")
    if steps < 1:
        raise EdgecError(f"--steps must be at least 1, got {steps}")
    n = int(compiled.example_input.shape[0])
    sess = Session(prog, compiled.target)
    labels = np.zeros(n, dtype=np.int64)           # the program reads no labels
    t0, out = time.perf_counter(), None
    every = max(1, steps // 10)
    for i in range(steps):
        out = sess.step(x[batch_rows(i, n, len(x))], labels)
        if (i + 1) % every == 0 or i + 1 == steps:
            log(f"batch {i + 1}/{steps} [{time.perf_counter() - t0:.1f}s]")
    sd = OrderedDict(copy.deepcopy(compiled.model).state_dict())
    stats = {}
    for b in prog.meta["adapt_bn"]:
        mod = b["module"]
        mean, var = out[f"bn/{mod}.running_mean"], out[f"bn/{mod}.running_var"]
        for k, v in ((f"{mod}.running_mean", mean), (f"{mod}.running_var", var)):
            if k not in sd or tuple(sd[k].shape) != v.shape:
                raise EdgecError(f"BatchNorm statistic {k!r} does not match the model")
            sd[k] = torch.from_numpy(v.copy()).to(sd[k].dtype)
        stats[mod] = (mean, var)
    return AdaptResult(prune_state_dict(compiled, sd), stats, time.perf_counter() - t0)
