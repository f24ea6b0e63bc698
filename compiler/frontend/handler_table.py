"""Merging the per-family handler dicts of the capture (aten/) and ONNX (onnx_ops/)
importers into one table."""
from __future__ import annotations


def gather_handlers(families, what: str) -> dict:
    """{op: handler} of every family module's ``HANDLERS``; an op claimed twice is a bug."""
    table: dict = {}
    for fam in families:
        for op, handler in fam.HANDLERS.items():
            if op in table:
                raise AssertionError(f"{what} op {op!r} has two handlers ({fam.__name__})")
            table[op] = handler
    return table
