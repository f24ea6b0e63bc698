"""The capture handler table: aten op name -> the function converting such a node
(``handler(AtenCall) -> Desc``), gathered from one module per op family."""
from __future__ import annotations

from edgec.compiler.frontend.handler_table import gather_handlers
from edgec.compiler.frontend.aten import (activation, avgpool, batchnorm, bias, channels, conv,
                                          gate, linear, loss, maxpool, plumbing, residual,
                                          shape)

HANDLERS = gather_handlers((plumbing, loss, conv, activation, maxpool, linear, shape,
                            batchnorm, residual, avgpool, bias, channels, gate), "aten")
convert_getitem = plumbing.convert_getitem      # keyed by operator.getitem, not a name
