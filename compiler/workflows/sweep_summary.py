"""`edgec sweep --summary OUT`: the table of a sweep's results, its CSV and the plot of
accuracy vs modeled cycles per step with the Pareto front.

One row per setting (mask and lr, and every other grid key whose value varies across the
points), over the users: the mean accuracy of the pretrained, the pruned and the tuned
model, the worst user's tuned accuracy, and the program's modeled cycles, MACs and DDR
bytes per step.  A row is on the Pareto front when no other row has at most its cycles
per step and at least its mean tuned accuracy (one of them strictly).
"""
from __future__ import annotations

import csv
import glob
import io
import json
import os

from edgec.isa.errors import EdgecError

from .cli_common import atomic_write

KEYS = ("mask", "lr", "steps", "train", "labels", "target")
COLUMNS = ("users", "kept_pct", "acc_pretrained", "acc_pruned", "acc_tuned_mean",
           "acc_tuned_min", "cycles_per_step", "macs_per_step", "ddr_bytes_per_step",
           "pareto")


def read_points(out: str) -> list[dict]:
    files = sorted(glob.glob(os.path.join(out, "points", "*.json")))
    if not files:
        raise EdgecError(f"{out}: no point files (expected {out}/points/*.json, written by "
                         "edgec sweep SPEC -o " + out + ")")
    pts = []
    for f in files:
        try:
            with open(f) as fh:
                pts.append(json.load(fh))
        except (OSError, ValueError) as e:
            raise EdgecError(f"{f}: not a sweep point file ({e})") from None
    return pts


def _mean(v: list[float]) -> float:
    return sum(v) / len(v)


def summarize(points: list[dict]) -> tuple[list[str], list[dict]]:
    """(the grid keys that name a row, the rows) from the point records."""
    keys = [k for k in KEYS if k in ("mask", "lr")
            or len({p["grid"][k] for p in points}) > 1]
    by: dict[tuple, list[dict]] = {}
    for p in points:
        by.setdefault(tuple(p["grid"][k] for k in keys), []).append(p)
    rows = []
    for k, ps in by.items():
        a = [p["accuracy"] for p in ps]
        cost = ps[0]["per_step"]
        rows.append({**dict(zip(keys, k)), "users": len(ps),
                     "kept_pct": 100.0 * ps[0]["kept"]["channels"] / ps[0]["kept"]["of"],
                     "acc_pretrained": _mean([x["pretrained"] for x in a]),
                     "acc_pruned": _mean([x["pruned"] for x in a]),
                     "acc_tuned_mean": _mean([x["tuned"] for x in a]),
                     "acc_tuned_min": min(x["tuned"] for x in a),
                     "cycles_per_step": cost["cycles"], "macs_per_step": cost["macs"],
                     "ddr_bytes_per_step": cost["ddr_bytes"]})
    rows.sort(key=lambda r: (-r["kept_pct"], r["mask"], float(r["lr"]),
                             tuple(str(r[k]) for k in keys[2:])))
    for r in rows:
        r["pareto"] = not any(
            o is not r and o["cycles_per_step"] <= r["cycles_per_step"]
            and o["acc_tuned_mean"] >= r["acc_tuned_mean"]
            and (o["cycles_per_step"] < r["cycles_per_step"]
                 or o["acc_tuned_mean"] > r["acc_tuned_mean"]) for o in rows)
    return keys, rows


def format_table(keys: list[str], rows: list[dict]) -> str:
    head = [*keys, "users", "kept%", "pretrained%", "pruned%", "tuned% mean", "tuned% min",
            "cycles/step", "MACs/step", "DDR B/step", "pareto"]
    body = [[*(str(r[k]) for k in keys), str(r["users"]), f"{r['kept_pct']:.1f}",
             f"{r['acc_pretrained']:.2f}", f"{r['acc_pruned']:.2f}",
             f"{r['acc_tuned_mean']:.2f}", f"{r['acc_tuned_min']:.2f}",
             f"{r['cycles_per_step']:,}", f"{r['macs_per_step']:,}",
             f"{r['ddr_bytes_per_step']:,}", "*" if r["pareto"] else ""] for r in rows]
    w = [max(len(x) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(  # noqa: E731
        c.ljust(n) if i < len(keys) else c.rjust(n)
        for i, (c, n) in enumerate(zip(cells, w))).rstrip()
    return "\n".join([line(head), line(["-" * n for n in w]), *map(line, body)])


def write_csv(path: str, keys: list[str], rows: list[dict]) -> None:
    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow([*keys, *COLUMNS])
    for r in rows:
        wr.writerow([*(r[k] for k in keys),
                     *(f"{r[c]:.4f}" if isinstance(r[c], float) else int(r[c])
                       if isinstance(r[c], bool) else r[c] for c in COLUMNS)])
    data = buf.getvalue().encode()
    atomic_write(path, lambda f: f.write(data))


def plot(path: str, keys: list[str], rows: list[dict], title: str) -> None:
    """Mean tuned accuracy (a bar down to the worst user) vs modeled cycles per step, one
    colour per mask and one marker per lr (nudged sideways so that settings with the same
    cycles stay apart); the Pareto front as a dashed line.  Needs matplotlib."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=120)
    masks = list(dict.fromkeys(r["mask"] for r in rows))
    lrs = list(dict.fromkeys(r["lr"] for r in rows))
    span = max(r["cycles_per_step"] for r in rows) - min(r["cycles_per_step"] for r in rows)
    nudge = 0.012 * (span or max(r["cycles_per_step"] for r in rows)) / 1e3
    marks = "osD^v<>P*X"
    xy = {}
    for r in rows:
        i = lrs.index(r["lr"])
        x = r["cycles_per_step"] / 1e3 + nudge * (i - (len(lrs) - 1) / 2)
        y = r["acc_tuned_mean"]
        xy[id(r)] = (x, y)
        ax.errorbar(x, y, yerr=[[y - r["acc_tuned_min"]], [0]], fmt=marks[i % len(marks)],
                    color=f"C{masks.index(r['mask']) % 10}", ms=7, capsize=3, alpha=0.9)
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["cycles_per_step"])
    ax.plot([xy[id(r)][0] for r in front], [xy[id(r)][1] for r in front], "k--", lw=1,
            zorder=0, label="Pareto front")
    for i, r in enumerate(front):      # labels point inwards: none leaves the axes
        right = i == len(front) - 1 and len(front) > 1
        ax.annotate(" / ".join(str(r[k]) for k in keys), xy[id(r)], textcoords="offset points",
                    xytext=(-7 if right else 7, 7), ha="right" if right else "left",
                    fontsize=8)
    for i, m in enumerate(masks):
        ax.plot([], [], "s", color=f"C{i % 10}", label=f"mask {m}")
    for i, lr in enumerate(lrs):
        ax.plot([], [], marks[i % len(marks)], color="grey", label=f"lr {lr}")
    ax.margins(x=0.08, y=0.08)
    ax.set_xlabel("modeled cycles per fine-tuning step (thousands)")
    ax.set_ylabel("accuracy after fine-tuning, %\n(mean over users; bar: down to the worst)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def summary(out: str, csv_path: str | None = None, png_path: str | None = None) -> str:
    """Print-ready text: the table, then where the CSV and the plot went (or how to get
    the plot when matplotlib is missing)."""
    points = read_points(out)
    keys, rows = summarize(points)
    csv_path = csv_path or os.path.join(out, "summary.csv")
    png_path = png_path or os.path.join(out, "summary.png")
    write_csv(csv_path, keys, rows)
    lines = [f"{len(points)} points in {out}; accuracy in % on each user's test data "
             "(float32 PyTorch), cycles from the target's timing model",
             format_table(keys, rows), f"wrote {csv_path}"]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        lines.append("no plot: matplotlib is not installed (pip install 'edgec[plot]'), "
                     f"then rerun edgec sweep --summary {out}")
        return "\n".join(lines)
    users = len({p["user"] for p in points})
    plot(png_path, keys, rows, f"{os.path.basename(os.path.abspath(out))}: {users} users, "
         f"{len(rows)} settings ({' / '.join(keys)})")
    lines.append(f"wrote {png_path}")
    return "\n".join(lines)
