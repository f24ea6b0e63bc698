"""The compile-time int32 bound of the gate's reduction (numerics.md section 6): ds sums
H*W int8 x int8 products, so H*W*127^2 must fit int32 whatever the tiling."""
import pytest

from edgec.compiler.ir.graph import Graph
from edgec.compiler.passes.quantize import check_reductions
from edgec.isa.errors import EdgecError


def test_gate_reduction_bound_is_proved():
    """ds sums H*W int8 products: H*W*127^2 must fit int32 (at most 133144 products)."""
    for hw, ok in ((133144, True), (133145, False)):
        g = Graph()
        g.add_value("dy", (1, 2, hw, 1), "i8", 0)
        g.add_value("x", (1, 2, hw, 1), "i8", 0)
        g.add_value("ds", (1, 2, 1, 1), "i8", 0)
        g.add_node("chmul_ds", ["dy", "x"], ["ds"], {}, layer="se", loc="model.py:9")
        if ok:
            check_reductions(g)
        else:
            with pytest.raises(EdgecError, match=r"model.py:9: layer 'se' \(chmul_ds\): a "
                                                 r"reduction of 133145 int8 products"):
                check_reductions(g)
