"""Loop IR: every materialised graph op becomes one tiled loop nest.

A nest names its dims with their full extents, a tile size per dim and an explicit loop
order (outermost first).  Parallel (output) dims come first; the reduction dims of a MAC
op are innermost, so one accumulator tile is live at a time.  The backend walks the nest
in this order and emits one instruction group per tile.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .ops import REGISTRY

# op -> (parallel dims, reduction dims), in default loop order: a view of the op registry
NEST_DIMS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    name: d.nest for name, d in REGISTRY.items() if d.materialised}


@dataclass
class LoopNest:
    node: int                       # index of the graph node it implements
    op: str
    layer: str | None
    dims: dict[str, int]            # full extent of each dim
    tiles: dict[str, int]           # tile size of each dim
    order: tuple[str, ...]          # loop order, outermost first
    unit: dict[str, int] = field(default_factory=dict)  # dims tiled in blocks of `unit`

    def verify(self) -> None:
        par, red = NEST_DIMS[self.op]
        if set(self.order) != set(par) | set(red) or len(self.order) != len(par) + len(red):
            raise ValueError(f"nest {self.node} ({self.op}): loop order {self.order} must "
                             f"list each of {par + red} once")
        if red and set(self.order[-len(red):]) != set(red):
            raise ValueError(f"nest {self.node} ({self.op}): reduction dims {red} must be "
                             "innermost")
        for d in self.order:
            t, u = self.tiles[d], self.unit.get(d, 1)
            if not 1 <= t <= self.dims[d] or t % u:
                raise ValueError(f"nest {self.node} ({self.op}): tile {d}={t} invalid for "
                                 f"extent {self.dims[d]} (unit {u})")
