"""The sweep spec (TOML, read with tomllib): the model, the users, the grid.

Every defect is one EdgecError that names the file, the key and what was expected
(``users.toml: grid.lr[1]: expected a number > 0, got 'fast'``).  Paths in the spec are
relative to the spec's folder.  The format, key by key: docs/usage.md ("Sweeps").
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field

from edgec.isa.errors import EdgecError

TOP_KEYS = ("model", "seed", "momentum", "weight_decay", "remaskable", "users", "grid")
GRID_KEYS = ("mask", "train", "lr", "steps", "labels", "target")
GRID_DEFAULTS = {"mask": ["none"], "train": ["all"], "lr": [0.01], "steps": [20],
                 "labels": ["given"], "target": ["default"]}
BY = ("l1", "bn-gamma")


@dataclass
class Spec:
    path: str                       # the spec file
    model: str                      # model.py (absolute)
    model_name: str                 # as written in the spec
    seed: int = 0
    momentum: float = 0.0
    weight_decay: float = 0.0
    remaskable: bool = True
    users: dict = field(default_factory=dict)   # generator / files (resolved paths)
    grid: dict = field(default_factory=dict)    # key -> list of normalised choices


class _Where:
    """Error helper: knows the spec file."""

    def __init__(self, path: str):
        self.path = path

    def bad(self, key: str, expected: str, got=None):
        tail = "" if got is None else f", got {got!r}"
        raise EdgecError(f"{self.path}: {key}: expected {expected}{tail}")

    def file(self, key: str, value, must_exist: bool = True) -> str:
        if not isinstance(value, str) or not value:
            self.bad(key, "a file name (string)", value)
        p = os.path.join(os.path.dirname(os.path.abspath(self.path)), value)
        if must_exist and not os.path.isfile(p):
            raise EdgecError(f"{self.path}: {key}: file {value!r} not found (looked for {p})")
        return p

    def keys(self, key: str, table, allowed) -> None:
        if not isinstance(table, dict):
            self.bad(key, "a table", table)
        extra = sorted(set(table) - set(allowed))
        if extra:
            raise EdgecError(f"{self.path}: {key + '.' if key else ''}{extra[0]}: unknown key; "
                             f"expected one of {', '.join(allowed)}")


def load_spec(path: str) -> Spec:
    """Read and check a sweep spec."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as e:
        raise EdgecError(f"{path}: cannot read ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise EdgecError(f"{path}: invalid TOML: {e}") from None
    w = _Where(path)
    w.keys("", raw, TOP_KEYS)
    for k in ("model", "users"):
        if k not in raw:
            raise EdgecError(f"{path}: {k}: missing (expected "
                             + ("the model.py file)" if k == "model" else
                                "a [users] table: generator + function, or files)"))
    spec = Spec(path, w.file("model", raw["model"]), raw["model"])
    spec.seed = _int(w, "seed", raw.get("seed", 0), 0)
    spec.momentum = _num(w, "momentum", raw.get("momentum", 0.0), lo=0.0, lo_ok=True)
    spec.weight_decay = _num(w, "weight_decay", raw.get("weight_decay", 0.0), lo=0.0,
                             lo_ok=True)
    spec.remaskable = raw.get("remaskable", True)
    if not isinstance(spec.remaskable, bool):
        w.bad("remaskable", "true or false", spec.remaskable)
    spec.users = _users(w, raw["users"])
    spec.grid = _grid(w, raw.get("grid", {}))
    return spec


def _int(w: _Where, key: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        w.bad(key, f"an integer >= {lo}", v)
    return v


def _num(w: _Where, key: str, v, lo: float = 0.0, lo_ok: bool = False) -> float:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v == v \
        and (v >= lo if lo_ok else v > lo)
    if not ok:
        w.bad(key, f"a number {'>=' if lo_ok else '>'} {lo:g}", v)
    return float(v)


def _users(w: _Where, u) -> dict:
    w.keys("users", u, ("generator", "function", "args", "files"))
    if ("generator" in u) == ("files" in u):
        raise EdgecError(f"{w.path}: users: expected either generator (+ function) or "
                         "files, not " + ("both" if "generator" in u else "neither"))
    if "generator" in u:
        fn = u.get("function", "users")
        if not isinstance(fn, str) or not fn.isidentifier():
            w.bad("users.function", "a Python function name", fn)
        args = u.get("args", {})
        if not isinstance(args, dict):
            w.bad("users.args", "a table of keyword arguments", args)
        return {"generator": w.file("users.generator", u["generator"]),
                "generator_name": u["generator"], "function": fn, "args": args}
    files = u["files"]
    if not isinstance(files, dict) or not files:
        w.bad("users.files", "a table: user name -> {train = FILE.npz, test = FILE.npz}",
              files)
    out = {}
    for name, f in files.items():
        key = f"users.files.{name}"
        w.keys(key, f, ("train", "test", "style"))
        if "train" not in f:
            raise EdgecError(f"{w.path}: {key}.train: missing (expected the training .npz)")
        out[name] = {"train": w.file(key + ".train", f["train"]),
                     "test": w.file(key + ".test", f.get("test", f["train"])),
                     "style": str(f.get("style", ""))}
    return {"files": out}


def _grid(w: _Where, g) -> dict:
    w.keys("grid", g, GRID_KEYS)
    out = {}
    for key in GRID_KEYS:
        vals = g.get(key, GRID_DEFAULTS[key])
        vals = vals if isinstance(vals, list) else [vals]
        if not vals:
            w.bad(f"grid.{key}", "a non-empty list", vals)
        norm = [CHOICES[key](w, f"grid.{key}[{i}]", v) for i, v in enumerate(vals)]
        labels = [c["label"] for c in norm]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise EdgecError(f"{w.path}: grid.{key}: {dup[0]!r} is listed twice")
        out[key] = norm
    return out


def _mask(w: _Where, key: str, v) -> dict:
    if v == "none":
        return {"label": "none", "kind": "none"}
    if isinstance(v, str):
        p = w.file(key, v)
        return {"label": os.path.splitext(os.path.basename(v))[0], "kind": "file",
                "path": p, "file": v}
    if not isinstance(v, dict):
        w.bad(key, '"none", a mask file name or a table {keep = F, by = "l1"|"bn-gamma", '
              'global = false}', v)
    w.keys(key, v, ("keep", "by", "global", "name"))
    if "keep" not in v:
        raise EdgecError(f"{w.path}: {key}.keep: missing (expected the kept fraction, "
                         "0 < F <= 1)")
    keep = _num(w, key + ".keep", v["keep"])
    if keep > 1:
        w.bad(key + ".keep", "a fraction in (0, 1]", v["keep"])
    by, glob = v.get("by", "l1"), v.get("global", False)
    if by not in BY:
        w.bad(key + ".by", " or ".join(repr(b) for b in BY), by)
    if not isinstance(glob, bool):
        w.bad(key + ".global", "true or false", glob)
    label = v.get("name", f"keep{keep:g}-{by}" + ("-global" if glob else ""))
    if not isinstance(label, str) or not label:
        w.bad(key + ".name", "a non-empty string", label)
    return {"label": label, "kind": "derive", "keep": keep, "by": by, "global": glob}


def _train(w: _Where, key: str, v) -> dict:
    if v in ("all", "bias-only"):
        return {"label": v, "train": [], "bias_only": v == "bias-only"}
    pats = [v] if isinstance(v, str) else v
    if not isinstance(pats, list) or not pats or not all(
            isinstance(p, str) and p for p in pats):
        w.bad(key, '"all", "bias-only", a glob over parameter names or a list of globs', v)
    return {"label": ",".join(pats), "train": list(pats), "bias_only": False}


def _lr(w: _Where, key: str, v) -> dict:
    return {"label": f"{_num(w, key, v):g}", "lr": float(v)}


def _steps(w: _Where, key: str, v) -> dict:
    return {"label": str(_int(w, key, v, 1)), "steps": v}


def _labels(w: _Where, key: str, v) -> dict:
    t = {"mode": v} if isinstance(v, str) else v
    if not isinstance(t, dict) or t.get("mode") not in ("given", "pseudo", "kd"):
        w.bad(key, '"given", "pseudo", "kd" or a table {mode = ..., threshold = P | '
              'temperature = T}', v)
    w.keys(key, t, ("mode", "threshold", "temperature"))
    mode = t["mode"]
    if mode == "pseudo":
        p = _num(w, key + ".threshold", t.get("threshold", 0.5), lo_ok=True)
        if p > 1 or "temperature" in t:
            w.bad(key, "pseudo labels take a threshold in [0, 1] (no temperature)", v)
        return {"label": f"pseudo@{p:g}", "teacher": {"target": "pseudo", "threshold": p}}
    if mode == "kd":
        temp = _num(w, key + ".temperature", t.get("temperature", 1.0))
        if "threshold" in t:
            w.bad(key, "kd takes a temperature (no threshold)", v)
        return {"label": f"kd@T{temp:g}", "teacher": {"target": "kd", "temp": temp}}
    if len(t) > 1:
        w.bad(key, '"given" takes no threshold or temperature', v)
    return {"label": "given", "teacher": None}


def _target(w: _Where, key: str, v) -> dict:
    if v == "default":
        return {"label": "default", "path": None}
    p = w.file(key, v)
    return {"label": os.path.splitext(os.path.basename(v))[0], "path": p}


CHOICES = {"mask": _mask, "train": _train, "lr": _lr, "steps": _steps, "labels": _labels,
           "target": _target}
