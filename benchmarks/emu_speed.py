"""Emulator speed: one ResNet-18 training step, translated vs interpreted vs PyTorch.

    python benchmarks/emu_speed.py [--program prog.bin] [--mask] [--steps 5] [--json F]

All in one run, on this machine (timings on a shared host are noisy: read the ratios):

    emu_over_torch              translated step (median of --steps steps of one Session, the
                                translation cached: what `edgec finetune` sees) / PyTorch's
                                float32 training step of the same model (median)
    emu_over_torch_interpreted  the same for the interpreter alone (Machine translate=False);
                                *_1thread: against PyTorch's step on one thread
    first_step_s                translation + one step, beside the interpreter's one step
                                (interpreted_step_s): why a one-shot run (`edgec run`: the
                                default translate=None) interprets, and Sessions translate
                                from their second step
    coverage                    share of the executed instructions inside translation blocks;
                                lifted_by_mnemonic: per mnemonic, lifted / executed
    split_s                     CPU seconds of one translated step by part: each block
                                kernel (ld, live, mac, rq, sgd), the commit, the interpreted
                                words, the host (inputs, outputs)
    blas                        the BLAS numpy uses (threadpoolctl when installed)

Also checks that the translated and interpreted steps left the same DDR and counters.
--program takes a compiled prog.bin (else examples/resnet18 is compiled, about 40 s);
--mask compiles with examples/resnet18/user.mask.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def log(msg: str) -> None:
    print(f"[emu_speed] {msg}", file=sys.stderr, flush=True)


def blas_info() -> dict:
    try:
        import threadpoolctl
    except ImportError:
        return {"threadpoolctl": "not installed", "config": np.__version__}
    info = [i for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
    return {k: info[0].get(k) for k in ("internal_api", "version", "architecture",
                                        "num_threads", "filepath")} if info else {}


def _timed_kernels(spent: dict):
    """Wrap the block kernels, the commit-less part of execute and the interpreter loop
    with CPU timers; returns a function that undoes it."""
    from edgec.runtime_emu import blockexec, fastrun
    from run import timed
    saved = dict(blockexec.KERNELS), fastrun.execute, fastrun._interpret
    cpu = time.process_time
    for k, fn in saved[0].items():
        blockexec.KERNELS[k] = timed(spent, k, fn, cpu)
    fastrun.execute = timed(spent, "blocks", saved[1], cpu)
    fastrun._interpret = timed(spent, "interpreted words", saved[2], cpu)

    def undo():
        blockexec.KERNELS.update(saved[0])
        fastrun.execute, fastrun._interpret = saved[1], saved[2]
    return undo


def coverage(tr) -> tuple[float, dict]:
    from edgec.runtime_emu.translate import _NAMES
    ops = tr.opcodes[:tr.limit]
    lifted = np.zeros(len(_NAMES), dtype=np.int64)
    for start, stop, blk in tr.plan:
        if blk is not None:
            lifted += np.bincount(tr.opcodes[start:stop], minlength=len(_NAMES))
    total = np.bincount(ops, minlength=len(_NAMES))
    by = {n: f"{int(lifted[k])}/{int(total[k])}" for k, n in enumerate(_NAMES) if total[k]}
    return tr.lifted / max(1, tr.limit), by


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--program", help="a compiled examples/resnet18 prog.bin")
    ap.add_argument("--mask", action="store_true", help="compile with its user.mask")
    ap.add_argument("--steps", type=int, default=5, help="translated steps (median)")
    ap.add_argument("--torch-runs", type=int, default=5)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)

    import torch

    from edgec.compiler.frontend.load import load_model
    from edgec.isa.container import load_program
    from edgec.isa.target import load_target
    from edgec.runtime_emu import translate
    from edgec.runtime_emu.host import Session
    from run import torch_step_times

    model_py = ROOT / "examples" / "resnet18" / "model.py"
    mask = ROOT / "examples" / "resnet18" / "user.mask" if args.mask else None
    if args.program:
        prog, tg = load_program(args.program), load_target(None)
    else:
        from edgec.compiler.driver import compile_model
        log("compiling examples/resnet18")
        c = compile_model(str(model_py), str(mask) if mask else None)
        prog, tg = c.program, c.target
    model, example = load_model(str(model_py))
    x = np.asarray(example, dtype=np.float32)
    y = np.random.default_rng(0).integers(0, int(prog.meta["classes"]), x.shape[0])
    load_before = list(os.getloadavg())

    log("interpreted step")
    si = Session(prog, tg, translate=False)
    t, cpu = time.perf_counter(), time.process_time()
    si.step(x, y, seed=1)
    interp_s, interp_cpu = time.perf_counter() - t, time.process_time() - cpu

    log("translated: first step (translation included), then the steps")
    translate._CACHE.clear()
    st = Session(prog, tg, translate=True)
    t, cpu = time.perf_counter(), time.process_time()
    st.step(x, y, seed=1)
    first_s, first_cpu = time.perf_counter() - t, time.process_time() - cpu
    same = (np.array_equal(st.machine.ddr, si.machine.ddr)
            and st.machine.counters == si.machine.counters)
    t = time.perf_counter()
    tr = translate.translate(st.machine)
    translate_s = time.perf_counter() - t
    walls, cpus = [], []
    for i in range(max(1, args.steps)):
        t, cpu = time.perf_counter(), time.process_time()
        st.step(x, y, seed=2 + i)
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - cpu)
    spent: dict = {}
    undo = _timed_kernels(spent)
    try:
        cpu = time.process_time()
        st.step(x, y, seed=99)
        step_cpu = time.process_time() - cpu
    finally:
        undo()
    kernels = {k: v for k, v in spent.items() if k not in ("blocks", "interpreted words")}
    split = dict(kernels)
    split["commit and block entry"] = spent.get("blocks", 0.0) - sum(kernels.values())
    split["interpreted words"] = spent.get("interpreted words", 0.0)
    split["host and dispatch"] = step_cpu - spent.get("blocks", 0.0) - split[
        "interpreted words"]

    log(f"PyTorch float32 step x {args.torch_runs}, {torch.get_num_threads()} threads")
    cpu = time.process_time()
    torch_s = statistics.median(torch_step_times(model, example, y, args.torch_runs, 0.01))
    torch_cpu = (time.process_time() - cpu) / (args.torch_runs + 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch_1t = statistics.median(torch_step_times(model, example, y, args.torch_runs,
                                                      0.01))
    finally:
        torch.set_num_threads(threads)
    emu_s = statistics.median(walls)
    cov, by = coverage(tr)
    res = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "program": args.program or f"examples/resnet18{' + user.mask' if mask else ''}",
        "instructions": len(st.machine.instrs),
        "emu_over_torch": emu_s / torch_s,
        "emu_over_torch_interpreted": interp_s / torch_s,
        "translated_step_s": emu_s, "translated_step_cpu_s": statistics.median(cpus),
        "translated_steps_s": walls,
        "interpreted_step_s": interp_s, "interpreted_step_cpu_s": interp_cpu,
        "first_step_s": first_s, "first_step_cpu_s": first_cpu,
        "translate_s": translate_s,
        "torch_step_s": torch_s, "torch_threads": threads,
        "torch_step_cpu_s": torch_cpu, "torch_step_1thread_s": torch_1t,
        "emu_over_torch_1thread": emu_s / torch_1t,
        "emu_over_torch_1thread_interpreted": interp_s / torch_1t,
        "speedup": interp_s / emu_s,
        "coverage": cov, "lifted_by_mnemonic": by,
        "blocks": sum(1 for _, _, b in tr.plan if b is not None),
        "split_cpu_s": split,
        "same_ddr_and_counters": same,
        "blas": blas_info(),
        "loadavg_before": load_before, "loadavg_after": list(os.getloadavg()),
    }
    print(f"emu_over_torch {res['emu_over_torch']:.2f} translated (step {emu_s:.3f} s), "
          f"{res['emu_over_torch_interpreted']:.2f} interpreted (step {interp_s:.3f} s); "
          f"torch {torch_s:.3f} s ({threads} threads, CPU {torch_cpu:.3f} s); vs torch on "
          f"one thread ({torch_1t:.3f} s): {res['emu_over_torch_1thread']:.2f} translated, "
          f"{res['emu_over_torch_1thread_interpreted']:.2f} interpreted")
    print(f"one-shot: translation + step {first_s:.3f} s (translation {translate_s:.3f} s) "
          f"vs interpreted step {interp_s:.3f} s")
    print(f"coverage {cov:.4f} of {tr.limit} instructions in {res['blocks']} blocks; "
          f"same DDR and counters: {same}")
    print("split (CPU s): " + ", ".join(f"{k} {v:.3f}" for k, v in split.items()))
    print(f"blas: {res['blas']}; load average {load_before} -> {res['loadavg_after']}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
