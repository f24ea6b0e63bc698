"""edgec sweep: spec errors, identical point files in every execution mode (serial,
--jobs, Ray), the remask path equal to the compile path, resume after SIGINT and SIGKILL,
and the summary against the point files.  The tiny spec (tests/data/sweep/tiny.toml): 2
users x 3 masks x 2 lr = 12 points in 4 programs, two masks of which keep the same count
(one compile, one remask)."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from edgec.compiler.workflows import cli

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests/data/sweep"
SPEC = DATA / "tiny.toml"
N_POINTS = 12


def _sweep(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(["sweep", *map(str, args)])
    return rc, out.getvalue(), err.getvalue()


def _points(out: Path, kind: str = "points") -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / kind).glob("*.json"))}


@pytest.fixture(scope="module")
def serial(tmp_path_factory) -> Path:
    """The uninterrupted serial run of the tiny spec: the reference."""
    out = tmp_path_factory.mktemp("serial") / "results"
    rc, text, err = _sweep(SPEC, "-o", out, "-q")
    assert rc == 0, err
    assert len(_points(out)) == N_POINTS
    return out


# ------------------------------------------------------------------ spec errors

BASE = f'model = "{DATA / "model.py"}"\n[users]\ngenerator = "{DATA / "users.py"}"\n'
BAD_SPECS = [
    ("model = 3\n[users]\nfiles = {}\n", "model: expected a file name (string), got 3"),
    (f'model = "{DATA / "model.py"}"\n', "users: missing"),
    ("modle = 1\n" + BASE, "modle: unknown key; expected one of model"),
    (BASE.replace("[users]", 'seed = "x"\n[users]'), "seed: expected an integer >= 0"),
    (BASE + '[grid]\nlr = [0.1, "fast"]\n', "grid.lr[1]: expected a number > 0, got 'fast'"),
    (BASE + "[grid]\nlr = [0.1, 0.1]\n", "grid.lr: '0.1' is listed twice"),
    (BASE + "[grid]\nsteps = 0\n", "grid.steps[0]: expected an integer >= 1, got 0"),
    (BASE + "[grid]\nmask = [{ keep = 1.5 }]\n",
     "grid.mask[0].keep: expected a fraction in (0, 1], got 1.5"),
    (BASE + '[grid]\nmask = [{ keep = 0.5, by = "l2" }]\n',
     "grid.mask[0].by: expected 'l1' or 'bn-gamma', got 'l2'"),
    (BASE + '[grid]\nmask = ["absent.mask"]\n', "grid.mask[0]: file 'absent.mask' not found"),
    (BASE + '[grid]\nlabels = ["teacher"]\n', "grid.labels[0]: expected \"given\", \"pseudo\""),
    (BASE + '[grid]\ntrain = [[]]\n', 'grid.train[0]: expected "all", "bias-only"'),
    (BASE + "[grid]\ncolour = 1\n", "grid.colour: unknown key; expected one of mask"),
    (BASE + 'files = { a = { train = "x.npz" } }\n',
     "users: expected either generator (+ function) or files, not both"),
    (BASE + 'function = "nope"\n', "users.function: "),
    ("model = \n", "invalid TOML"),
]


@pytest.mark.parametrize("text,expected", BAD_SPECS)
def test_spec_errors_name_file_key_and_expectation(tmp_path, text, expected):
    spec = tmp_path / "bad.toml"
    spec.write_text(text)
    out = tmp_path / "results"
    rc, _, err = _sweep(spec, "-o", out)
    assert rc == 1
    lines = err.strip().splitlines()
    assert lines[-1].startswith(f"edgec: error: {spec}: "), err
    assert expected in lines[-1], err
    assert "Traceback" not in err
    assert not out.exists()             # nothing written


def test_mask_file_error_names_the_mask_line(tmp_path):
    (tmp_path / "bad.mask").write_text("fc1: 0-3\nfc9: 0\n")
    spec = tmp_path / "s.toml"
    spec.write_text(BASE + '[grid]\nmask = ["bad.mask"]\n')
    rc, _, err = _sweep(spec, "-o", tmp_path / "r")
    assert rc == 1 and f"{tmp_path / 'bad.mask'}:2:1" in err and "fc9" in err, err


def test_a_failing_compile_names_the_point(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(BASE + f'[grid]\ntarget = ["{ROOT / "tests/data/tiny.toml"}"]\n'
                    'labels = "kd"\n')     # the teacher's logits do not fit its buffers
    rc, _, err = _sweep(spec, "-o", tmp_path / "r")
    assert rc == 1 and "Traceback" not in err
    assert "edgec: error: sweep point (mask none, target tiny, train all, labels kd@T1, " \
           "lr 0.01): model.py:" in err and "do not fit" in err, err
    assert not list((tmp_path / "r").glob("points/*.json"))


def test_command_line_misuse(tmp_path):
    rc, _, err = _sweep("-o", tmp_path)
    assert rc == 1 and "give a sweep spec" in err
    rc, _, err = _sweep(SPEC, "--summary", tmp_path)
    assert rc == 1 and "drop SPEC.toml" in err


def test_address_where_nothing_listens(tmp_path):
    pytest.importorskip("ray")
    port = _free_port("127.0.0.2")          # bound, then closed: nothing listens there
    rc, _, err = _sweep(SPEC, "-o", tmp_path / "r", "--address", f"127.0.0.2:{port}")
    assert rc == 1 and "no Ray cluster answers there" in err, err


def test_summary_of_a_folder_without_points(tmp_path):
    rc, _, err = _sweep("--summary", tmp_path)
    assert rc == 1 and "no point files" in err


def test_address_without_ray_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)      # import ray -> ImportError
    rc, _, err = _sweep(SPEC, "-o", tmp_path / "r", "--address", "127.0.0.2:1")
    assert rc == 1 and "pip install 'edgec[cluster]'" in err, err
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------ determinism

def test_serial_points_are_complete_and_deterministic(serial):
    pts = [json.loads(b) for b in _points(serial).values()]
    assert {p["id"] + ".json" for p in pts} == set(_points(serial))
    assert {(p["user"], p["grid"]["mask"], p["grid"]["lr"]) for p in pts} == {
        (u, m, lr) for u in ("plain", "inverted") for m in ("none", "keep0.5-l1", "half_b")
        for lr in ("0.05", "0.1")}
    for p in pts:
        assert len(p["loss"]) == p["steps"] == 4
        assert p["per_step"]["cycles"] * 4 == p["emulator"]["totals"]["cycles"]
        assert p["per_step"]["macs"] * 4 == p["emulator"]["totals"]["macs"]
        assert p["kept"]["layers"] == ({} if p["grid"]["mask"] == "none" else {"fc1": 8})
    timing = [json.loads(b) for b in _points(serial, "timing").values()]
    assert len(timing) == N_POINTS
    how = {(json.loads((serial / "points" / f"{t['id']}.json").read_text())["grid"]["mask"],
            t["compile_how"]) for t in timing}
    assert how == {("none", "compile"), ("keep0.5-l1", "compile"), ("half_b", "remask")}
    assert all(t["compile_s"] >= 0 and t["emulator_s"] > 0 for t in timing)


def test_jobs_2_writes_the_same_point_files(serial, tmp_path):
    out = tmp_path / "r"
    rc, _, err = _sweep(SPEC, "-o", out, "--jobs", "2", "-q")
    assert rc == 0, err
    assert _points(out) == _points(serial)
    assert len({json.loads(b)["worker"] for b in _points(out, "timing").values()}) == 2


def test_remask_path_equals_compile_path(serial):
    """The group whose masks keep the same count, run with its masks in the other order:
    half_b is compiled and keep0.5-l1 remasked; the records are the same bytes."""
    from edgec.compiler.workflows.sweep import _dump, run_group
    from edgec.compiler.workflows.sweep_plan import make_plan
    from edgec.compiler.workflows.sweep_spec import load_spec
    plan = make_plan(load_spec(str(SPEC)), lambda m: None)
    group = next(g for g in plan.groups if len(g["masks"]) == 2
                 and g["compile"]["lr"] == 0.05)
    got = []
    run_group({**group, "masks": group["masks"][::-1]}, plan.shared,
              lambda rec, timing: got.append((rec, timing)))
    assert {(r["grid"]["mask"], t["compile_how"]) for r, t in got} == {
        ("half_b", "compile"), ("keep0.5-l1", "remask")}
    ref = _points(serial)
    for rec, _ in got:
        assert _dump(rec) == ref[rec["id"] + ".json"]


# ------------------------------------------------------------------ resume

def _interrupted(out: Path, sig: int, *extra: str) -> int:
    """Start the sweep in a subprocess, send ``sig`` to it once some points are written;
    returns how many were finished then."""
    cmd = [sys.executable, "-m", "edgec.compiler.workflows.cli", "sweep", str(SPEC),
           "-o", str(out), "-q", *extra]
    p = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while len(list((out / "points").glob("*.json"))) < 2:
            assert p.poll() is None, p.stderr.read().decode()
            assert time.monotonic() < deadline, "no point written"
            time.sleep(0.01)
        os.killpg(p.pid, sig)
        rc = p.wait(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert rc == (130 if sig == signal.SIGINT else -signal.SIGKILL), p.stderr.read()
    return len(list((out / "points").glob("*.json")))


@pytest.mark.parametrize("sig,extra", [(signal.SIGINT, ()), (signal.SIGKILL, ()),
                                       pytest.param(signal.SIGINT, ("--jobs", "2"),
                                                    marks=pytest.mark.slow)],
                         ids=["SIGINT", "SIGKILL", "SIGINT-jobs"])
def test_resume_after_a_kill(serial, tmp_path, sig, extra):
    """Kill the whole process group (a terminal's Ctrl-C reaches the --jobs workers
    too), rerun serially: the same files as the uninterrupted run."""
    out = tmp_path / "r"
    done = _interrupted(out, sig, *extra)
    assert 2 <= done < N_POINTS, "killed too late to test a resume"
    rc, _, err = _sweep(SPEC, "-o", out)
    assert rc == 0, err
    assert f"{N_POINTS} points in 4 programs; {done} finished, {N_POINTS - done} to run" in err
    assert _points(out) == _points(serial)          # nothing lost, changed or duplicated
    assert set(_points(out, "timing")) == set(_points(serial))


# ------------------------------------------------------------------ summary

def test_summary_csv_and_table_match_the_point_files(serial, tmp_path):
    pts = [json.loads(b) for b in _points(serial).values()]
    want = {}
    for p in pts:
        want.setdefault((p["grid"]["mask"], p["grid"]["lr"]), []).append(p)
    csv_path, png = tmp_path / "s.csv", tmp_path / "s.png"
    rc, text, err = _sweep("--summary", serial, "--csv", csv_path, "--plot", png)
    assert rc == 0, err
    rows = list(csv.DictReader(csv_path.open()))
    assert {(r["mask"], r["lr"]) for r in rows} == set(want)
    front = set()
    for key, ps in want.items():
        acc = [p["accuracy"]["tuned"] for p in ps]
        cyc = ps[0]["per_step"]["cycles"]
        if not any(q is not ps and q[0]["per_step"]["cycles"] <= cyc
                   and sum(a["accuracy"]["tuned"] for a in q) / len(q) >= sum(acc) / len(acc)
                   and (q[0]["per_step"]["cycles"] < cyc or sum(
                       a["accuracy"]["tuned"] for a in q) / len(q) > sum(acc) / len(acc))
                   for q in want.values()):
            front.add(key)
    for r in rows:
        ps = want[(r["mask"], r["lr"])]
        acc = [p["accuracy"]["tuned"] for p in ps]
        assert int(r["users"]) == len(ps) == 2
        assert float(r["acc_tuned_mean"]) == pytest.approx(sum(acc) / len(acc), abs=1e-4)
        assert float(r["acc_tuned_min"]) == pytest.approx(min(acc), abs=1e-4)
        assert float(r["acc_pretrained"]) == pytest.approx(
            sum(p["accuracy"]["pretrained"] for p in ps) / 2, abs=1e-4)
        assert int(r["cycles_per_step"]) == ps[0]["per_step"]["cycles"]
        assert r["pareto"] == str(int((r["mask"], r["lr"]) in front))
        line = next(ln for ln in text.splitlines() if ln.split()[:2] == [r["mask"], r["lr"]])
        assert f"{sum(acc) / len(acc):.2f}" in line and f"{min(acc):.2f}" in line
        assert f"{ps[0]['per_step']['cycles']:,}" in line
    assert front and f"wrote {csv_path}" in text
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "pip install 'edgec[plot]'" in text and not png.exists()
    else:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_without_matplotlib_says_how_to_plot(serial, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    png = tmp_path / "s.png"
    rc, text, _ = _sweep("--summary", serial, "--csv", tmp_path / "s.csv", "--plot", png)
    assert rc == 0 and "pip install 'edgec[plot]'" in text and not png.exists()
    assert "keep0.5-l1" in text


# ------------------------------------------------------------------ Ray

def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _stop(p: subprocess.Popen) -> None:
    """Stop one `ray start --block` node: its own process group (SIGTERM, then SIGKILL)."""
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGKILL)
    p.wait()


def _wait_started(p: subprocess.Popen, log: Path, deadline: float) -> None:
    while "Ray runtime started" not in log.read_text(errors="replace"):
        assert p.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "ray start timed out: " + log.read_text()
        time.sleep(0.2)


@pytest.mark.slow
def test_ray_two_nodes_write_the_same_point_files(serial, tmp_path):
    pytest.importorskip("ray")
    ray_bin = Path(sys.executable).with_name("ray")
    if not ray_bin.exists():
        pytest.skip("the ray command is not installed beside this Python")
    # loopback only; 127.0.0.2/3 (not 127.0.0.1, which Ray swaps for the host's address)
    head_ip, port = "127.0.0.2", _free_port("127.0.0.2")
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")      # short: socket path limit
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--block", "--num-cpus=1", "--disable-usage-stats"]
    nodes = []
    try:
        deadline = time.monotonic() + 240
        for i, args in enumerate([["--head", f"--node-ip-address={head_ip}", f"--port={port}",
                                   f"--temp-dir={temp}", "--include-dashboard=false"],
                                  [f"--address={head_ip}:{port}",
                                   "--node-ip-address=127.0.0.3"]]):
            log = tmp_path / f"node{i}.log"
            with log.open("w") as f:
                nodes.append(subprocess.Popen([str(ray_bin), "start", *args, *common],
                                              stdout=f, stderr=subprocess.STDOUT, env=env,
                                              start_new_session=True))
            _wait_started(nodes[-1], log, deadline)
        out = tmp_path / "r"
        r = subprocess.run([sys.executable, "-m", "edgec.compiler.workflows.cli", "sweep",
                            str(SPEC), "-o", str(out), "--address", f"{head_ip}:{port}"],
                           env=env, capture_output=True, text=True, timeout=400)
        assert r.returncode == 0, r.stderr
        assert "2 nodes" in r.stderr
        assert _points(out) == _points(serial)
        assert len({json.loads(b)["node"] for b in _points(out, "timing").values()}) == 2
    finally:
        for p in reversed(nodes):
            _stop(p)
        shutil.rmtree(temp, ignore_errors=True)
