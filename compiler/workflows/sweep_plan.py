"""Planning a sweep (in the driver process): the users' data, the masks, every point of
the grid with its id, and the groups of points that share one program.

A point is (user, mask, target, train, labels, lr, steps).  Its id is a hash of what
determines its result: the model file's and its weights' SHA-256, the kept channels, the
target's fingerprint, the hyper-parameters, the user's name and data digest and the edgec
version.  A group is the points whose programs differ at most in WHICH channels they keep
(same target, hyper-parameters and kept count per layer): one compile, then
``remask`` for every other mask (docs/usage.md, "Sweeps").
"""
from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import os
from dataclasses import dataclass, field

import numpy as np

from edgec.isa.errors import EdgecError

from .sweep_spec import Spec


@dataclass
class Plan:
    spec: Spec
    shared: dict                  # what every task reads: users' data, mask texts
    groups: list = field(default_factory=list)   # dicts, see _groups
    masks: dict = field(default_factory=dict)    # label -> {"kept", "text", "spec"}

    @property
    def points(self) -> list[dict]:
        return [p for g in self.groups for m in g["masks"] for p in m["points"]]


def edgec_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("edgec")
    except PackageNotFoundError:        # running from a checkout without an install
        return "0+unknown"


def file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def weights_digest(model) -> str:
    """SHA-256 over the state_dict: names, dtypes, shapes and bytes, in order."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        a = v.detach().cpu().contiguous().numpy()
        h.update(f"{k}|{a.dtype}|{list(a.shape)}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def data_digest(user: dict) -> str:
    h = hashlib.sha256()
    for part in ("train", "test"):
        for a in user[part]:
            a = np.ascontiguousarray(a)
            h.update(f"{part}|{a.dtype}|{list(a.shape)}|".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def point_id(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def load_users(spec: Spec, sample_shape: tuple, classes: int, batch: int) -> dict:
    """{name: {"train": (x, y), "test": (x, y), "style": text}}, checked as finetune
    checks its data."""
    from .cli_common import load_data
    from .finetune import check_data
    u = spec.users
    if "files" in u:
        raw = {n: {"train": load_data(f["train"]), "test": load_data(f["test"]),
                   "style": f["style"]} for n, f in u["files"].items()}
        where = {n: (f["train"], f["test"]) for n, f in u["files"].items()}
    else:
        raw = _generate(spec)
        where = {n: (f"{u['generator_name']}: {u['function']}()['{n}']['train']",
                     f"{u['generator_name']}: {u['function']}()['{n}']['test']") for n in raw}
    out = {}
    for name in raw:
        r = raw[name]
        tr = check_data(*r["train"], sample_shape, classes, batch, where[name][0])
        te = check_data(*r["test"], sample_shape, classes, 1, where[name][1])
        out[name] = {"train": tr, "test": te, "style": str(r.get("style", ""))}
    return out


def _generate(spec: Spec) -> dict:
    u = spec.users
    path, fn = u["generator"], u["function"]
    name = "edgec_sweep_users_" + hashlib.sha256(path.encode()).hexdigest()[:8]
    try:
        mod_spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(mod)
    except Exception as e:
        raise EdgecError(f"{spec.path}: users.generator: {u['generator_name']} failed to "
                         f"load ({type(e).__name__}: {e})") from None
    f = getattr(mod, fn, None)
    if not callable(f):
        raise EdgecError(f"{spec.path}: users.function: {u['generator_name']} defines no "
                         f"function {fn!r}")
    try:
        users = f(**u["args"])
    except Exception as e:
        raise EdgecError(f"{spec.path}: users: {u['generator_name']}: {fn}() failed "
                         f"({type(e).__name__}: {e})") from None
    ok = isinstance(users, dict) and users and all(
        isinstance(k, str) and isinstance(v, dict) and "train" in v and "test" in v
        and all(isinstance(v[p], tuple) and len(v[p]) == 2 for p in ("train", "test"))
        for k, v in users.items())
    if not ok:
        raise EdgecError(f"{spec.path}: users: {u['generator_name']}: {fn}() must return "
                         "{name: {'train': (x, y), 'test': (x, y), 'style': text}}")
    return users


def resolve_masks(spec: Spec, model, example, log) -> dict:
    """label -> {"kept": {layer: channels}, "text": mask file text, "spec": what made it}:
    derived as ``edgec mask`` derives, or read from the mask file, checked against the
    model (a line keeping every channel is no mask)."""
    from ..mask.derive import derive_mask, format_mask
    from ..mask.layers import user_mask
    choices = spec.grid["mask"]
    graph = logits = None
    if any(c["kind"] != "none" for c in choices):
        from ..frontend.capture import capture
        graph = capture(model, example, spec.model)
        logits = graph.producer(graph.outputs["logits"]).layer
    out, notes = {}, set()

    def note(msg: str) -> None:        # once per sweep, not once per derived mask
        if msg not in notes:
            notes.add(msg)
            log(f"note: {msg}")
    for c in choices:
        if c["kind"] == "none":
            kept, text = {}, "# no mask: every channel kept\n"
        elif c["kind"] == "file":
            kept = dict(user_mask(c["path"], model, logits))
            with open(c["path"], encoding="utf-8") as f:
                text = f.read()
        else:
            kept = derive_mask(model, example, spec.model, c["keep"], c["by"], c["global"],
                               note=note, graph=graph)
            text = format_mask(kept, f"edgec mask --keep {c['keep']:g} --by {c['by']}"
                               f"{' --global' if c['global'] else ''}: {spec.model_name}")
            kept = dict(user_mask(kept, model, logits))
        spec_out = {k: v for k, v in c.items() if k not in ("path", "label")}
        out[c["label"]] = {"kept": {k: sorted(v) for k, v in sorted(kept.items())},
                           "text": text, "spec": spec_out}
    return out


def make_plan(spec: Spec, log) -> Plan:
    """Everything a sweep needs before its first compile (loads the model once)."""
    import torch

    from ..frontend.load import load_model
    from ..mask.layers import mask_layers
    from edgec.isa.target import load_target
    model, example = load_model(spec.model)
    with torch.no_grad():
        classes = int(model(example).shape[1])
    users = load_users(spec, tuple(example.shape[1:]), classes, int(example.shape[0]))
    masks = resolve_masks(spec, model, example, log)
    widths = mask_layers(model)[0]
    targets = {t["label"]: load_target(t["path"]) for t in spec.grid["target"]}
    base = {"edgec": edgec_version(), "model": file_digest(spec.model),
            "weights": weights_digest(model)}
    shared = {"model": spec.model, "users": users,
              "masks": {k: m["text"] for k, m in masks.items()}}
    plan = Plan(spec, shared, masks=masks)
    plan.groups = _groups(spec, base, masks, users, targets, widths)
    return plan


def _groups(spec: Spec, base: dict, masks: dict, users: dict, targets: dict,
            widths: dict) -> list[dict]:
    """Points grouped by program: (target, train, labels, lr, kept counts); in grid order.
    Two grid entries with the same channels are one point (the first label names it)."""
    g = spec.grid
    digests = {n: data_digest(u) for n, u in users.items()}
    groups: dict[tuple, dict] = {}
    seen: set[str] = set()
    for tgt, tr, lab, lr, mk, st in itertools.product(
            g["target"], g["train"], g["labels"], g["lr"], g["mask"], g["steps"]):
        kept = masks[mk["label"]]["kept"]
        counts = tuple((k, len(v)) for k, v in kept.items())
        hyper = {"lr": lr["lr"], "steps": st["steps"], "train": tr["train"],
                 "bias_only": tr["bias_only"], "teacher": lab["teacher"], "seed": spec.seed,
                 "momentum": spec.momentum, "weight_decay": spec.weight_decay,
                 "remaskable": spec.remaskable}
        gkey = (tgt["label"], tr["label"], lab["label"], lr["label"],
                counts if spec.remaskable else mk["label"])
        grp = groups.setdefault(gkey, {
            "target": tgt["path"], "target_name": targets[tgt["label"]].name,
            "target_fp": targets[tgt["label"]].fingerprint.hex(),
            "compile": {k: hyper[k] for k in ("lr", "train", "bias_only", "teacher",
                                              "seed", "momentum", "weight_decay",
                                              "remaskable")},
            "masks": []})
        entry = next((m for m in grp["masks"] if m["label"] == mk["label"]), None)
        if entry is None:
            entry = {"label": mk["label"], "points": []}
            grp["masks"].append(entry)
        for name in users:
            key = {**base, "mask": kept, "target": grp["target_fp"], "hyper": hyper,
                   "user": {"name": name, "data": digests[name]}}
            pid = point_id(key)
            if pid in seen:
                continue
            seen.add(pid)
            entry["points"].append({
                "id": pid, "user": name, "steps": st["steps"],
                "grid": {"mask": mk["label"], "target": tgt["label"], "train": tr["label"],
                         "labels": lab["label"], "lr": lr["label"], "steps": st["label"]},
                "key": key,
                "kept": {"channels": sum(len(v) for v in kept.values())
                         + sum(w for k, w in widths.items() if k not in kept),
                         "of": sum(widths.values()),
                         "layers": {k: len(v) for k, v in kept.items()}}})
    return [grp for grp in groups.values() if any(m["points"] for m in grp["masks"])]
