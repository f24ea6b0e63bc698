"""The host interface of a program: what a host (runtime_emu/host.py) reads and writes
through the symbol table and the meta entries to run one step.

`check_interface` is run by the host before a step and by the compiler before it writes
a program, so that a program the compiler writes is one the host can run: a problem is
a compile error naming the layer, not a failure at run time.
"""
from __future__ import annotations

import math

from .errors import EdgecError


class InterfaceError(EdgecError):
    """A program the host cannot run; `symbol` names the symbol at fault (or None)."""

    def __init__(self, msg: str, symbol: str | None = None):
        super().__init__(msg)
        self.symbol = symbol


def _shape(s: dict) -> list[int]:
    return [int(d) for d in s["shape"]]


def _find(program, name, what: str) -> dict:
    for s in program.symbols:
        if s["name"] == name:
            return s
    raise InterfaceError(f"program has no symbol {name!r} ({what})", name)


def check_interface(program) -> None:
    """Raise InterfaceError unless the host can run `program`: an input symbol `in:x`; a
    logits symbol (meta `logits`) of shape [N, K]; labels `in:labels` (if any) i32 [N];
    one i32 `rng_seed`; a teacher's logits of the logits' shape; and for every trained
    parameter a master with the parameter's element count."""
    _find(program, "in:x", "the input x")
    name = program.meta.get("logits")
    if name is None:
        raise InterfaceError("program meta has no 'logits' entry")
    ls = _find(program, str(name), "the logits")
    if len(_shape(ls)) != 2 or 0 in _shape(ls):
        raise InterfaceError(f"logits symbol {name!r} has shape {_shape(ls)}, expected "
                             "[N, K]", str(name))
    n = _shape(ls)[0]
    for s in program.symbols:
        if s["name"] == "in:labels" and (_shape(s) != [n] or s.get("dtype") != "i32"):
            raise InterfaceError(f"symbol 'in:labels' is {s.get('dtype')} {_shape(s)}, "
                                 f"expected i32 [{n}] (one label per logits row)", "in:labels")
    ss = _find(program, "rng_seed", "the stochastic-rounding seed")
    if math.prod(_shape(ss)) != 1 or ss.get("dtype") != "i32":
        raise InterfaceError(f"symbol 'rng_seed' is {ss.get('dtype')} {_shape(ss)}, "
                             "expected one i32", "rng_seed")
    if program.meta.get("teacher"):
        ts = _find(program, str(program.meta.get("teacher_logits")), "the teacher's logits")
        if _shape(ts) != _shape(ls):
            raise InterfaceError(f"teacher logits symbol {ts['name']!r} has shape "
                                 f"{_shape(ts)}, the logits {_shape(ls)}", ts["name"])
    for p in program.meta.get("params", []):
        ms = _find(program, str(p.get("master")), f"the master of {p.get('name')!r}")
        want = math.prod(int(d) for d in p["shape"])
        if math.prod(_shape(ms)) != want:
            raise InterfaceError(f"master symbol {ms['name']!r} has {math.prod(_shape(ms))} "
                                 f"elements, the shape {list(p['shape'])} of parameter "
                                 f"{p.get('name')!r} needs {want}", ms["name"])
        if p.get("grad") is not None:
            _find(program, str(p["grad"]), f"the gradient of {p.get('name')!r}")
