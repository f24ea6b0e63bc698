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
import warnings
import weakref

import torch

from edgec.isa.errors import EdgecError
from edgec.isa.filekind import PYTHON, check_kind

_counter = itertools.count()

# module object -> (absolute model file, line in it where the module was constructed);
# filled while a model file executes, used by capture() for ops whose forward() is not
# written in model.py (children of nn.Sequential, ...)
_CONSTRUCTED_AT: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[str, int]]" = \
    weakref.WeakKeyDictionary()


def construction_site(module: torch.nn.Module) -> tuple[str, int] | None:
    """(model file, line) where ``module`` was constructed by a loaded model file."""
    try:
        return _CONSTRUCTED_AT.get(module)
    except TypeError:
        return None


def _record_constructions(apath: str):
    """Patch nn.Module.__init__ so that constructions from ``apath`` record their line."""
    orig = torch.nn.Module.__init__

    def patched(self, *args, **kwargs):
        orig(self, *args, **kwargs)
        if self in _CONSTRUCTED_AT:
            return
        f = sys._getframe(1)
        while f is not None:
            if f.f_code.co_filename == apath:
                try:
                    _CONSTRUCTED_AT[self] = (apath, f.f_lineno)
                except TypeError:
                    pass
                break
            f = f.f_back

    torch.nn.Module.__init__ = patched
    return orig


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
    try:
        msg = str(e).strip().splitlines()
    except Exception:  # noqa: BLE001 - a user exception whose __str__ itself fails
        msg = []
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
    check_kind(path, "a model.py (Python defining `model` and `example_input`), a "
               "model.onnx or an IR dump (.ir / .loop)", (PYTHON,))
    try:
        with open(apath, "rb") as f:
            source = f.read()
    except OSError as e:
        raise EdgecError(f"{path}: cannot read file: {e.strerror or e}") from None

    try:
        with warnings.catch_warnings():     # e.g. SyntaxWarning: not edgec's diagnostics
            warnings.simplefilter("ignore")
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
    orig_init = _record_constructions(apath)
    try:
        with warnings.catch_warnings():  # the user's warnings are not edgec's diagnostics
            warnings.simplefilter("ignore")
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
        torch.nn.Module.__init__ = orig_init
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
