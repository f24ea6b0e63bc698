"""`edgec sweep`: running the points of a sweep, one group (one program) at a time.

``run_group`` is the unit every execution mode runs (in this process, in a worker process
of ``--jobs``, or as a Ray task): compile the group's first mask (``--remaskable`` unless
the spec says otherwise), give the program every other mask of the group by ``remask``
(the same bytes as a compile with that mask), fine-tune each user on the emulator
(workflows/finetune.py), evaluate in float32 PyTorch as ``edgec finetune`` does, and
read the per-step cost from ``edgec report``'s static model.  Each finished point is
handed to ``emit(record, timing)``: the record is deterministic, the timing (seconds, and
whether the program was compiled or remasked) is not.

Result files (``write_point``): ``OUT/points/<id>.json`` (the record) and
``OUT/timing/<id>.json`` (the timing), both written atomically, the timing first: a point
whose record exists is finished, and a rerun skips it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import tempfile
import time

from edgec.isa.errors import EdgecError

from .cli_common import atomic_write

EMU_KEYS = ("instructions", "macs", "cycles", "ddr_read_bytes", "ddr_write_bytes")


def point_path(out: str, pid: str, kind: str = "points") -> str:
    return os.path.join(out, kind, f"{pid}.json")


def finished(out: str, pid: str) -> bool:
    """Whether the point's record is there and readable (atomic writes: whole or absent)."""
    try:
        with open(point_path(out, pid)) as f:
            return json.load(f).get("id") == pid
    except (OSError, ValueError):
        return False


def _dump(obj) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


def write_point(out: str, record: dict, timing: dict) -> None:
    for kind, obj in (("timing", timing), ("points", record)):
        os.makedirs(os.path.join(out, kind), exist_ok=True)
        data = _dump(obj)
        atomic_write(point_path(out, record["id"], kind), lambda f, d=data: f.write(d))


def pin_threads() -> None:
    """One BLAS / torch thread: float evaluation then sums in one order in every mode."""
    import torch
    torch.set_num_threads(1)


def run_group(group: dict, shared: dict, emit, log=None) -> int:
    """Run every point of ``group`` (see sweep_plan); returns how many ran."""
    log = log or (lambda line: None)
    pin_threads()
    done, base, pre = 0, None, {}
    with tempfile.TemporaryDirectory(prefix="edgec-sweep-") as tmp:
        for entry in group["masks"]:
            if not entry["points"]:
                continue
            mask_path = os.path.join(tmp, f"{entry['label']}.mask")
            with open(mask_path, "w", encoding="utf-8") as f:
                f.write(shared["masks"][entry["label"]])
            try:
                c, how, secs = program_for(group, shared, mask_path, base)
            except EdgecError as e:
                raise EdgecError(f"sweep point {describe(group, entry['label'])}: {e}") from None
            base = base or c
            cost = per_step_cost(c)
            for p in entry["points"]:
                rec, timing = run_point(c, p, shared, cost, pre)
                timing.update(compile_how=how, compile_s=secs)
                emit(rec, timing)
                log(point_line(rec, timing))
                done += 1
    return done


def describe(group: dict, mask: str) -> str:
    """The grid settings of a group's mask, for error messages."""
    g = group["masks"][0]["points"][0]["grid"] if group["masks"][0]["points"] else {}
    return (f"(mask {mask}, target {g.get('target')}, train {g.get('train')}, labels "
            f"{g.get('labels')}, lr {g.get('lr')})")


def program_for(group: dict, shared: dict, mask_path: str, base):
    """(Compiled, "compile" | "remask", seconds) for the mask file ``mask_path``: remask
    ``base`` (a program of this group, so with the same kept counts) when the group's
    programs are remaskable, else (or if remask refuses) compile."""
    from edgec.isa.container import read_program

    from ..mask.remask import remask_blob
    t0 = time.perf_counter()
    if base is not None and group["compile"]["remaskable"]:
        try:
            blob = remask_blob(base.blob, mask_path)
        except EdgecError:
            pass                    # not sound for this mask: compile it
        else:
            prog = read_program(blob)
            c = dataclasses.replace(base, program=prog, blob=blob,
                                    mask={k: list(v) for k, v in prog.meta["mask"].items()})
            return c, "remask", time.perf_counter() - t0
    from ..driver import compile_model
    o = group["compile"]
    c = compile_model(shared["model"], mask_path, group["target"], lr=o["lr"], seed=o["seed"],
                      train=tuple(o["train"]), bias_only=o["bias_only"], teacher=o["teacher"],
                      remaskable=o["remaskable"], momentum=o["momentum"],
                      weight_decay=o["weight_decay"])
    return c, "compile", time.perf_counter() - t0


def per_step_cost(c) -> dict:
    """One step's modeled cost (``edgec report``'s totals over the whole program)."""
    from ..report import program_report
    t = program_report(c.program, c.target)["totals"]["overall"]
    return {"cycles": int(t["cycles"]), "macs": int(t["macs"]),
            "ddr_bytes": int(t["ddr_bytes"] + t["index_bytes"]),
            "instructions": int(t["instructions"]), "roofline_cycles": float(t["bound"]),
            "program_bytes": len(c.blob)}


def run_point(c, p: dict, shared: dict, cost: dict, pre: dict) -> tuple[dict, dict]:
    """Fine-tune one user on the program ``c`` and evaluate: (record, timing)."""
    from .finetune import accuracy, finetune
    from .floatmodel import prune_state_dict, pruned_channels
    user = shared["users"][p["user"]]
    (x, y), (ex, ey) = user["train"], user["test"]
    t0 = time.perf_counter()
    res = finetune(c, x, y, p["steps"], seed=p["key"]["hyper"]["seed"])
    t1 = time.perf_counter()
    if p["user"] not in pre:
        pre[p["user"]] = accuracy(c.model, ex, ey)
    pruned = accuracy(c.model, ex, ey, prune_state_dict(c, c.model.state_dict())) \
        if pruned_channels(c) else pre[p["user"]]
    tuned = accuracy(c.model, ex, ey, res.state_dict)
    t2 = time.perf_counter()
    emu = {k: int(res.totals.get(k, 0)) for k in EMU_KEYS}
    rec = {"id": p["id"], "user": p["user"], "style": user["style"], "grid": p["grid"],
           "key": p["key"], "kept": p["kept"], "steps": p["steps"],
           "accuracy": {"pretrained": pre[p["user"]], "pruned": pruned, "tuned": tuned,
                        "test_rows": int(len(ey))},
           "loss": [float(v) for v in res.losses], "per_step": cost,
           "emulator": {"totals": emu, "cycles_per_step": emu["cycles"] / p["steps"]},
           "exponent_moves": len(res.moves), "trained_parameters": len(res.params)}
    return rec, {"id": p["id"], "emulator_s": t1 - t0, "eval_s": t2 - t1,
                 "worker": f"{socket.gethostname()}:{os.getpid()}"}


def point_line(rec: dict, timing: dict) -> str:
    a, g = rec["accuracy"], rec["grid"]
    return (f"{rec['user']:>10} mask {g['mask']:<16} lr {g['lr']:<6} steps {g['steps']:<4} "
            f"acc {a['pretrained']:5.1f} -> pruned {a['pruned']:5.1f} -> tuned "
            f"{a['tuned']:5.1f}  {rec['per_step']['cycles']:,} cycles/step  "
            f"[{timing['compile_how']} {timing['compile_s']:.1f}s, emulator "
            f"{timing['emulator_s']:.1f}s]")


def clean_leftovers(out: str, age_s: float = 60.0) -> int:
    """Remove the temporary files of atomic writes that a killed sweep left in OUT/points
    and OUT/timing (only those older than ``age_s``: a live writer's are not touched)."""
    import glob
    n = 0
    for f in glob.glob(os.path.join(out, "*", ".edgec-*")):
        if os.path.basename(os.path.dirname(f)) in ("points", "timing") \
                and time.time() - os.path.getmtime(f) > age_s:
            os.unlink(f)
            n += 1
    return n


def pending_groups(groups: list[dict], out: str) -> list[dict]:
    """The groups with only their unfinished points (groups with none left are dropped)."""
    left = []
    for g in groups:
        masks = [{**m, "points": [p for p in m["points"] if not finished(out, p["id"])]}
                 for m in g["masks"]]
        if any(m["points"] for m in masks):
            left.append({**g, "masks": masks})
    return left
