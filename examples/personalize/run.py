"""On-device personalisation of a pretrained digits CNN for one user (issue 6).

    python examples/personalize/run.py [--steps 300] [--lr 0.01] [--json FILE]

The pretrained model (train.py, factory digits) meets a user whose digits have thicker
strokes (user_digits.py).  With the user's channel mask (user.mask), it is fine-tuned on the
user's training split and evaluated on the user's held-out split:

  acc_before   the pretrained model (float32, unpruned) on the user's test split
  acc_pruned   the same, pruned by the user's mask
  acc_fp32     PyTorch float32 fine-tuning of the masked model: plain SGD, the same steps,
               batches (finetune.batch_rows), learning rate and mask as the device
  acc_int8     the compiled program, N steps on the emulator (edgec finetune's Python API);
               the tuned state_dict evaluated in float32 PyTorch
  acc_int8_emu the same tuned weights evaluated by the int8 forward pass on the emulator
  acc_pseudo   --labels pseudo: no user labels; the program labels each sample with its
               frozen teacher's (the pretrained weights') argmax, confident samples only
  acc_kd       --loss kd: no user labels; distillation from the frozen teacher
  acc_adapt_bn --adapt-bn: no user labels; the BN statistics re-estimated on the device
               from the unlabeled user training split (2 passes), masked model
  acc_adapt_bn_unpruned  the same for the unmasked model
  acc_pseudo_bn, acc_kd_bn   BatchNorm per domain: the student's BN statistics adapted
               first (acc_adapt_bn), then pseudo labels / distillation from a teacher that
               keeps the pretrained statistics (`finetune --adapt-bn --labels pseudo`)
  acc_pseudo_bn_teacher, acc_kd_bn_teacher   the same with the teacher's statistics
               adapted too (the unmasked model's, acc_adapt_bn_unpruned; --teacher-bn adapted)
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from user_digits import splits  # noqa: E402

from edgec.compiler.driver import compile_model  # noqa: E402
from edgec.compiler.workflows.finetune import (accuracy, batch_rows, emulator_accuracy,  # noqa: E402
                                     finetune)
from edgec.compiler.workflows.floatmodel import masked_float_model, prune_state_dict  # noqa: E402

MODEL, MASK = str(HERE / "model.py"), str(HERE / "user.mask")


def float_finetune(c, x, y, steps: int, lr: float) -> dict:
    """Plain SGD in float32 on the masked model, batches as on the device; the pruned
    state_dict after the last step."""
    model = masked_float_model(c)          # eval mode: BN statistics stay frozen
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    n = int(c.example_input.shape[0])
    for i in range(steps):
        r = batch_rows(i, n, len(x))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.from_numpy(x[r])),
                                          torch.from_numpy(y[r])).backward()
        opt.step()
    return prune_state_dict(c, model.state_dict())


def adapt_bn(args, xtr, xte, yte, mask=MASK):
    """--adapt-bn: the BN statistics re-estimated on the device from the unlabeled user
    training split (two passes over it), no training; (float32 accuracy of the result,
    the adapted statistics)."""
    from edgec.compiler.workflows.adapt import adapt_bn as run_adapt
    c = compile_model(MODEL, mask, adapt_bn=True)
    n = int(c.example_input.shape[0])
    res = run_adapt(c, xtr, steps=2 * -(-len(xtr) // n))
    return accuracy(c.model, xte, yte, res.state_dict), res.stats


def teacher_finetune(args, xtr, xte, yte, teacher, log, **bn) -> float:
    """Teacher targets (no user labels), N emulator steps; float32 accuracy.  `bn`:
    compile_model's bn_stats / teacher_bn_stats (BatchNorm per domain)."""
    ct = compile_model(MODEL, MASK, lr=args.lr, seed=args.seed, teacher=teacher, **bn)
    ftt = finetune(ct, xtr, None, args.steps, seed=args.seed, log=log,
                   every=max(1, args.steps // 5))
    return accuracy(ct.model, xte, yte, ftt.state_dict)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    ap.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (default 0.01)")
    ap.add_argument("--seed", type=int, default=0, help="first stochastic-rounding seed")
    ap.add_argument("--threshold", type=float, default=0.5,
                    help="pseudo labels: teacher confidence threshold (default 0.5)")
    ap.add_argument("--temperature", type=float, default=2.0,
                    help="distillation temperature, a power of two (default 2)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    s = splits()
    xtr, ytr = s["user_train"]
    xte, yte = s["user_test"]
    log = lambda m: print(f"  [{time.perf_counter() - t0:6.1f}s] {m}", file=sys.stderr)  # noqa

    log("compile (labels from the user)")
    c = compile_model(MODEL, MASK, lr=args.lr, seed=args.seed)
    res = {"steps": args.steps, "lr": args.lr, "batch": int(c.example_input.shape[0]),
           "user_train_rows": len(xtr), "user_test_rows": len(xte)}
    res["acc_before"] = accuracy(c.model, xte, yte)
    res["acc_pruned"] = accuracy(c.model, xte, yte, prune_state_dict(c, c.model.state_dict()))
    log("float32 fine-tuning")
    res["acc_fp32"] = accuracy(c.model, xte, yte, float_finetune(c, xtr, ytr, args.steps,
                                                                  args.lr))
    log(f"{args.steps} emulator steps")
    ft = finetune(c, xtr, ytr, args.steps, seed=args.seed, log=log,
                  every=max(1, args.steps // 5))
    res["acc_int8"] = accuracy(c.model, xte, yte, ft.state_dict)
    log("int8 forward on the emulator (test split)")
    res["acc_int8_emu"] = emulator_accuracy(c, ft.session, xte, yte)
    res["emu_seconds"] = round(ft.seconds, 2)
    teachers = (("acc_pseudo", {"target": "pseudo", "threshold": args.threshold}),
                ("acc_kd", {"target": "kd", "temp": args.temperature}))
    for key, teacher in teachers:
        log(f"{key[4:]}: targets from the frozen teacher, no user labels")
        res[key] = teacher_finetune(args, xtr, xte, yte, teacher, log)
    res["threshold"], res["temperature"] = args.threshold, args.temperature
    res["acc_adapt_bn"], student = adapt_bn(args, xtr, xte, yte)
    res["acc_adapt_bn_unpruned"], full = adapt_bn(args, xtr, xte, yte, mask=None)
    for key, teacher in teachers:
        log(f"{key[4:]} with BatchNorm per domain (teacher: pretrained statistics)")
        res[f"{key}_bn"] = teacher_finetune(args, xtr, xte, yte, teacher, log,
                                            bn_stats=student)
        log(f"{key[4:]} with BatchNorm per domain (teacher: adapted statistics)")
        res[f"{key}_bn_teacher"] = teacher_finetune(args, xtr, xte, yte, teacher, log,
                                                    bn_stats=student, teacher_bn_stats=full)
    res["seconds"] = round(time.perf_counter() - t0, 1)

    print(f"user test split: {len(xte)} digits, thick strokes; {args.steps} steps of "
          f"{res['batch']}, lr {args.lr}")
    rows = [("acc_before", "pretrained, float32"), ("acc_pruned", "pretrained + user mask"),
            ("acc_fp32", "float32 SGD fine-tuning (masked)"),
            ("acc_int8", "emulator fine-tuning, state_dict in float32"),
            ("acc_int8_emu", "emulator fine-tuning, int8 forward on the emulator"),
            ("acc_pseudo", "pseudo labels (no user labels), state_dict in float32"),
            ("acc_kd", "distillation (no user labels), state_dict in float32"),
            ("acc_adapt_bn", "BN statistics adapted on the device, masked (no labels)"),
            ("acc_adapt_bn_unpruned", "the same without the mask (no labels)"),
            ("acc_pseudo_bn", "BN adapted, then pseudo labels (teacher: pretrained BN)"),
            ("acc_kd_bn", "BN adapted, then distillation (teacher: pretrained BN)"),
            ("acc_pseudo_bn_teacher", "BN adapted, then pseudo labels (teacher: adapted BN)"),
            ("acc_kd_bn_teacher", "BN adapted, then distillation (teacher: adapted BN)")]
    for k, what in rows:
        v = res[k]
        print(f"  {k:<22} {'not built' if v is None else f'{v:6.2f}%':>9}  {what}")
    print(f"float vs emulator evaluation of the tuned weights: "
          f"{res['acc_int8'] - res['acc_int8_emu']:+.2f} points; total {res['seconds']}s")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
        print(f"wrote {args.json}")
    return res


if __name__ == "__main__":
    main()
