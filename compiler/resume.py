"""Resume the pipeline from an IR dump (`edgec compile FILE.ir|FILE.loop`).

A dump names its source (model.py, user.mask, target, lr, seed) in its header.  Resuming
re-loads model.py for the float parameters (and, before quantize, the calibration input),
runs the passes that come after the dumped stage, and re-derives the initial integer
weights (``graph.meta["init"]``) from the float parameters and the formats written in the
dump, exactly as the quantize pass computes them (a hand-edited exponent is honoured).
A ``.loop`` dump's tile sizes and loop order are used as written, after checking them
(LoopNest.verify, extents/units against the graph, MAC tiles against the group rule,
tiles against the target's buffers).
"""
from __future__ import annotations

import os

import numpy as np

from edgec.isa.errors import EdgecError
from edgec.isa.target import load_target

from .backend.tilefit import (bias_grad_fits, geometry, group_rule_error, sgd_fits,
                              sgd_geometry, tile_fits)
from .backend.tiling import tile_graph
from .frontend.capture import const_values
from .frontend.load import load_model
from .ir.graph import Graph
from .ir.loops import LoopNest
from .ir.text import IRFile, located, read_ir
from .options import CompileOptions
from .passes.quantize import initial_data
from .passes.shapes import check_shapes, verify_graph



def _source_path(f: IRFile, path: str, key: str) -> str | None:
    p = f.source.get(key)
    if p is None:
        return None
    if not isinstance(p, str):
        raise EdgecError(f"{path}: source {key}= must be a quoted path or none")
    if not os.path.exists(p):
        alt = os.path.join(os.path.dirname(os.path.abspath(path)), p)
        if not os.path.exists(alt):
            raise EdgecError(f"{path}: source {key} {p!r} (named in the header) does not "
                             "exist; fix the path in the 'source' line or dump again")
        p = alt
    return p


def check_nests(g: Graph, nests: list[LoopNest], tg, path: str, lines: dict) -> None:
    """A dumped nest must implement the node it names with the graph's extents and units,
    a MAC nest's tiles must keep the group rule (tilefit.group_rule_error), and its tiles
    must fit the target's buffers."""
    auto = {n.node: n for n in tile_graph(g, tg)}

    def err(k, msg):
        ln = lines.get(("nest", k))
        raise EdgecError(f"{path}:{ln[0]}:{ln[1]}: {msg}" if ln else f"{path}: {msg}")

    seen = set()
    for k, n in enumerate(nests):
        a = auto.get(n.node)
        if a is None:
            err(k, f"node {n.node} ({n.op}) is not materialised as a loop nest")
        if n.node in seen:
            err(k, f"node {n.node} has two nests")
        if seen and n.node < max(seen):
            err(k, f"nest {n.node} comes after nest {max(seen)}: nests run in the listed "
                "order, which must be node order")
        seen.add(n.node)
        if n.layer != a.layer:
            err(k, f"nest {n.node}: layer {n.layer!r}, but the node is in {a.layer!r}")
        if n.dims != a.dims:
            err(k, f"nest {n.node} ({n.op}): extents {n.dims} do not match the graph "
                f"{a.dims}; only tile sizes and loop order may be edited")
        if n.unit != a.unit:
            err(k, f"nest {n.node} ({n.op}): units {n.unit or 'none'} must be "
                f"{a.unit or 'none'}")
        gn, t = g.nodes[n.node], n.tiles
        if n.op.startswith(("conv", "linear")):
            kind = n.op.split("_")[-1] if "_" in n.op else "fp"
            base = {"fp": "conv", "eb": "conv_eb", "wg": "conv_wg"}[kind]
            broken = group_rule_error(geometry(g, gn), t)
            if broken:
                err(k, f"nest {n.node} ({n.op}) @{n.layer}: {broken}")
            ok = tile_fits(base, geometry(g, gn), t, tg)
        elif n.op == "bias_grad":
            hw = int(np.prod(g.values[gn.inputs[0]].shape[2:], dtype=np.int64))
            ok = bias_grad_fits(t, hw, tg)
        elif n.op == "sgd":
            inner = sgd_geometry(g, gn)[2]
            ok = sgd_fits(t, inner, tg, mom=bool(gn.attrs.get("mom")))
        else:       # element-wise / pooling / loss: the tile pass takes the largest fit
            ok = all(t[d] <= a.tiles[d] for d in t)
        if not ok:
            err(k, f"nest {n.node} ({n.op}): tiles {t} do not fit the target's buffers "
                f"(ibuf {tg.ibuf}, wbuf {tg.wbuf}, abuf {tg.abuf})")
    missing = sorted(set(auto) - seen)
    if missing:
        raise EdgecError(f"{path}: no loop nest for node(s) {missing} "
                         f"({', '.join(auto[i].op for i in missing)})")


def read_checked(path: str) -> IRFile:
    """read_ir, then the rest of the verifier a direct compile runs after every pass (the
    shapes), with errors located in the file."""
    f = read_ir(path)
    try:
        check_shapes(f.graph)
    except ValueError as e:
        raise located(f, path, e) from None
    return f


def compile_ir(path: str, log=None):
    """Continue the pipeline from a dump; returns a driver.Compiled."""
    from .driver import PIPELINE, emit_program, make_passes
    from .mask.layers import user_mask
    log = log or (lambda msg: None)
    f = read_checked(path)
    g, stage = f.graph, f.stage
    model_path = _source_path(f, path, "model")
    if model_path is None:
        raise EdgecError(f"{path}: the header names no source model; cannot resume")
    lr, seed = f.source.get("lr", 0.01), f.source.get("seed", 0)
    if not isinstance(lr, (int, float)) or not isinstance(seed, int):
        raise EdgecError(f"{path}: source lr= must be a number and seed= an integer")
    try:            # the same checks as a direct compile
        opts = CompileOptions(lr=float(lr), seed=seed, **{
            k: float(f.source.get(k, 0.0)) for k in ("momentum", "weight_decay")}).check()
    except EdgecError as e:
        raise EdgecError(f"{path}: source line: {e}") from None
    tg = load_target(_source_path(f, path, "target"))
    log("load " + model_path)
    model, example = load_model(model_path)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    for p in g.params.values():
        if p.is_const:
            continue
        if p.name not in params:
            raise EdgecError(f"{path}: parameter {p.name!r} is not in {model_path}")
        if tuple(params[p.name].shape) != tuple(p.shape):
            raise EdgecError(f"{path}: parameter {p.name!r} has shape {list(p.shape)} in "
                             f"the dump but {list(params[p.name].shape)} in {model_path}")
    extra = sorted(set(params) - set(g.params))
    if extra:
        raise EdgecError(f"{path}: {model_path} has parameters the dump lacks: {extra}")
    try:
        params.update(const_values(g, model))
    except (AttributeError, TypeError, ValueError) as e:
        raise EdgecError(f"{path}: cannot derive the frozen constants from {model_path} "
                         f"({e})") from None
    if stage == "capture":
        mp = _source_path(f, path, "mask")
        mask = user_mask(mp, model, g.producer(g.outputs["logits"]).layer)
    else:
        mask = {k: list(v) for k, v in g.meta.get("mask", {}).items()}
    stages = ("capture",) + PIPELINE
    todo = PIPELINE[stages.index(stage):] if stage in stages else ()
    for pas in make_passes(mask, example, params, opts, abuf=tg.abuf):
        name = pas.name
        if name not in todo:
            continue
        log(name)
        try:
            g = pas.apply(g)
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise EdgecError(f"{path}: pass {name!r} cannot run on this dump "
                             f"({type(e).__name__}: {e})") from None
        try:
            verify_graph(g)
        except ValueError as e:
            raise EdgecError(f"{path}: after pass {name!r}: {e}") from None
    if stage in ("quantize", "update", "tile"):
        try:
            g.meta["init"] = initial_data(g, params)
        except EdgecError as e:
            raise EdgecError(f"{path}: {e}") from None
    if stage == "tile":
        nests = f.nests
        check_nests(g, nests, tg, path, f.lines)
    else:
        log("tile")
        try:
            nests = tile_graph(g, tg)
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise EdgecError(f"{path}: cannot tile this dump ({type(e).__name__}: {e})") \
                from None
    try:
        return emit_program(g, nests, tg, lr, seed, model, example, mask, log)
    except EdgecError as e:
        raise located(f, path, e) from None
    except (KeyError, ValueError, TypeError, IndexError) as e:
        raise EdgecError(f"{path}: cannot generate code for this dump "
                         f"({type(e).__name__}: {e})") from None
