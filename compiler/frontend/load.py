"""Load a user's model.py: execute it and fetch ``model`` and ``example_input``.

Every problem becomes one :class:`EdgecError` naming the file (and line/column where
known); no Python traceback reaches the user.
"""
from __future__ import annotations

import hashlib
import importlib.util
import itertools
import os
import sys
import traceback

import torch

from edgec.isa.errors import EdgecError

_counter = itertools.count()


def _innermost_frame_in(tb, path: str):
    """(line, function) of the innermost traceback frame that belongs to ``path``."""
    found = None
    for fs in traceback.extract_tb(tb):
        try:
            same = os.path.abspath(fs.filename) == path
        except (TypeError, ValueError):
            same = False
        if same:
            found = fs
    return found


def _exc_text(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    first = msg[0] if msg else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def load_model(path: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """Execute ``path`` and return its module-level ``model`` and ``example_input``.

    ``model`` must be a ``torch.nn.Module``; ``example_input`` a floating-point tensor of
    rank 4 (N, C, H, W) or rank 2 (N, F) with N >= 1.
    """
    apath = os.path.abspath(path)
    if not os.path.exists(apath):
        raise EdgecError(f"{path}: no such file")
    if not os.path.isfile(apath):
        raise EdgecError(f"{path}: not a regular file")
    try:
        with open(apath, "rb") as f:
            source = f.read()
    except OSError as e:
        raise EdgecError(f"{path}: cannot read file: {e.strerror or e}") from None

    try:
        code = compile(source, apath, "exec")
    except SyntaxError as e:
        line = e.lineno or 1
        col = e.offset or 1
        raise EdgecError(f"{path}:{line}:{col}: syntax error: {e.msg}") from None
    except ValueError as e:  # e.g. null bytes
        raise EdgecError(f"{path}: cannot compile: {e}") from None

    digest = hashlib.sha1(apath.encode()).hexdigest()[:10]
    modname = f"_edgec_user_model_{digest}_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(modname, apath)
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    try:
        exec(code, module.__dict__)
    except SystemExit as e:
        raise EdgecError(f"{path}: the model file called exit({e.code})") from None
    except BaseException as e:  # noqa: BLE001 - user code may raise anything
        if isinstance(e, KeyboardInterrupt):
            raise
        fs = _innermost_frame_in(e.__traceback__, apath)
        where = f"{path}:{fs.lineno}" if fs is not None else path
        raise EdgecError(f"{where}: error while executing the model file: {_exc_text(e)}") from None
    finally:
        sys.modules.pop(modname, None)

    ns = module.__dict__
    if "model" not in ns:
        raise EdgecError(f"{path}: does not define `model` (a torch.nn.Module at module level)")
    model = ns["model"]
    if not isinstance(model, torch.nn.Module):
        raise EdgecError(
            f"{path}: `model` must be a torch.nn.Module, got {type(model).__name__}")
    if "example_input" not in ns:
        raise EdgecError(
            f"{path}: does not define `example_input` (a float tensor (N, C, H, W) or (N, F))")
    x = ns["example_input"]
    if not isinstance(x, torch.Tensor):
        raise EdgecError(
            f"{path}: `example_input` must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise EdgecError(
            f"{path}: `example_input` must be a floating-point tensor, got {x.dtype}")
    if x.dim() not in (2, 4):
        raise EdgecError(
            f"{path}: `example_input` must have shape (N, C, H, W) or (N, F), "
            f"got shape {tuple(x.shape)}")
    if any(s < 1 for s in x.shape):
        raise EdgecError(f"{path}: `example_input` has an empty dimension: {tuple(x.shape)}")
    return model, x.detach().to(torch.float32)
