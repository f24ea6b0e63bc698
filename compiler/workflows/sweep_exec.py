"""Where the groups of a sweep run: in this process (serial, the default), in N local
worker processes (``--jobs N``, spawned), or on an existing Ray cluster (``--address``).

Every mode runs the same function, sweep.run_group, on the same groups; results do not
depend on the mode (point records are byte-identical; tests/workflows/test_sweep.py).
Workers get one BLAS / OpenMP thread each (THREAD_ENV): N workers on N cores, and
float sums in the same order as the serial run.  The shared inputs (the users' data and
the mask texts) go to each worker once: as the pool's initializer argument, or into Ray's
object store with ray.put.  A task is a whole group (one compile, then remasks, then
every user): several small points per task.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from functools import partial

from edgec.isa.errors import EdgecError

from .sweep import run_group, write_point

THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "NUMEXPR_NUM_THREADS": "1"}
RAY_MISSING = ("--address needs Ray, an optional extra: pip install 'edgec[cluster]' "
               "(or pip install ray), on this machine and on every node of the cluster")


def run_serial(groups, shared, out, log) -> int:
    return sum(run_group(g, shared, partial(write_point, out), log) for g in groups)


@contextmanager
def _env(extra: dict):
    """os.environ with ``extra`` while the block runs (spawned workers inherit it)."""
    old = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_SHARED: dict = {}


def _init_worker(shared: dict) -> None:
    _SHARED.clear()
    _SHARED.update(shared)


def _worker_log(line: str) -> None:
    print(f"  [pid {os.getpid()}] {line}", file=sys.stderr, flush=True)


def _job(group: dict, out: str, quiet: bool) -> int:
    return run_group(group, _SHARED, partial(write_point, out),
                     None if quiet else _worker_log)


def run_jobs(groups, shared, out, jobs: int, log, quiet: bool) -> int:
    """The groups on ``jobs`` spawned worker processes; each writes its points itself."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    n = 0
    with _env(THREAD_ENV):
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context(
            "spawn"), initializer=_init_worker, initargs=(shared,))
        try:
            futs = [pool.submit(_job, g, out, quiet) for g in groups]
            for i, f in enumerate(as_completed(futs)):
                n += f.result()
                log(f"group {i + 1}/{len(groups)} done")
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return n


def _ray_group(group: dict, shared: dict) -> list:
    """A Ray task: one group; the records and timings go back to the driver."""
    import ray
    node = ray.get_runtime_context().get_node_id()[:12]
    got = []
    run_group(group, shared, lambda rec, timing: got.append((rec, {**timing, "node": node})))
    return got


def check_ray(address: str, timeout: float = 5.0) -> None:
    """Before any work: Ray is installed, and something listens at ``address`` (ray.init
    would retry for minutes); 'auto' and ray:// addresses are left to Ray."""
    import socket
    try:
        import ray  # noqa: F401
    except ImportError:
        raise EdgecError(RAY_MISSING) from None
    host, _, port = address.rpartition(":")
    if address == "auto" or "://" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)),
                                 timeout=timeout).close()
    except OSError as e:
        raise EdgecError(f"--address {address}: no Ray cluster answers there ({e}); "
                         "start one with `ray start --head` and pass its address") from None


def run_ray(groups, shared, out, address: str, log) -> int:
    """The groups as Ray tasks (one CPU each) on the cluster at ``address``; the driver
    writes each group's points as its task returns."""
    try:
        import ray
    except ImportError:
        raise EdgecError(RAY_MISSING) from None
    try:
        ray.init(address=address, runtime_env={"env_vars": dict(THREAD_ENV)},
                 logging_level="ERROR", log_to_driver=False)
    except Exception as e:        # ConnectionError, ValueError, ...: one line, no traceback
        raise EdgecError(f"--address {address}: cannot connect to a Ray cluster "
                         f"({type(e).__name__}: {e}); start one with `ray start --head`"
                         ) from None
    try:
        log(f"ray: {int(ray.cluster_resources().get('CPU', 0))} CPUs on "
            f"{len(ray.nodes())} nodes")
        ref = ray.put(shared)                    # the users' data, once, for every task
        task = ray.remote(num_cpus=1)(_ray_group)
        pending = [task.remote(g, ref) for g in groups]
        n = 0
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                got = ray.get(ready[0])
            except Exception as e:       # RayTaskError: the task's own error, one line
                cause = getattr(e, "cause", e)
                if isinstance(cause, EdgecError):
                    raise EdgecError(str(cause)) from None
                raise
            for rec, timing in got:
                write_point(out, rec, timing)
                n += 1
            log(f"group {len(groups) - len(pending)}/{len(groups)} done ({n} points)")
        return n
    finally:
        ray.shutdown()
