"""The capture handler table: aten op name -> the function converting such a node
(``handler(AtenCall) -> Desc``), gathered from one module per op family."""
from __future__ import annotations

from edgec.compiler.frontend.aten import (activation, avgpool, batchnorm, bias, conv, linear,
                                          loss, maxpool, plumbing, residual, shape)

FAMILIES = (plumbing, loss, conv, activation, maxpool, linear, shape, batchnorm, residual,
            avgpool, bias)


def _gather(families) -> dict:
    table: dict = {}
    for fam in families:
        for op, handler in fam.HANDLERS.items():
            if op in table:
                raise AssertionError(f"aten op {op!r} has two handlers ({fam.__name__})")
            table[op] = handler
    return table


HANDLERS = _gather(FAMILIES)
convert_getitem = plumbing.convert_getitem
