"""numpy's BLAS kept to one thread while the emulator runs (`one_blas_thread`).

Every matmul of the emulator covers one instruction's tiles: microseconds of work, too
little for OpenBLAS's worker threads to pay off, and on a busy machine their spin-waiting
costs several times the work itself (one ResNet-18 step took 7x longer on a loaded
2-core host).  OpenBLAS has no Python API, so this finds the OpenBLAS that numpy loaded
(Linux: /proc/self/maps) and calls its C functions openblas_get/set_num_threads (under any
of the symbol prefixes and suffixes of its builds) through ctypes, restoring the thread
count afterwards.  With another BLAS, or where the library cannot be found, it does
nothing.  Results never depend on it: every matmul of the emulator is exact.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools

import numpy  # noqa: F401  (loads the BLAS that _openblas looks for)

_SYMBOLS = [(f"{p}openblas_get_num_threads{s}", f"{p}openblas_set_num_threads{s}")
            for p in ("", "scipy_") for s in ("", "64_", "_64_")]


@functools.cache
def _openblas():
    """(get_num_threads, set_num_threads) of the loaded OpenBLAS, or None."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
            paths = sorted({ln.split()[-1] for ln in fh
                            if "openblas" in ln.rsplit("/", 1)[-1] and "/" in ln})
    except OSError:
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)          # already loaded: only a new handle
        except OSError:
            continue
        for get_name, set_name in _SYMBOLS:
            get, set_ = getattr(lib, get_name, None), getattr(lib, set_name, None)
            if get is not None and set_ is not None:
                get.restype, get.argtypes = ctypes.c_int, []
                set_.restype, set_.argtypes = None, [ctypes.c_int]
                return get, set_
    return None


@contextlib.contextmanager
def one_blas_thread():
    """Run the body with numpy's OpenBLAS on one thread (a no-op without OpenBLAS)."""
    fns = _openblas()
    if fns is None:
        yield
        return
    get, set_ = fns
    old = get()
    set_(1)
    try:
        yield
    finally:
        set_(old)
