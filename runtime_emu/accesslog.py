"""Which DDR bytes a run read, and which instruction last wrote each byte.

The DMA instructions append what they touched to a log (a box of bytes: start, shape and
strides; or an explicit array of byte addresses), and the per-byte maps are replayed from
it (once, then cached until the next record) only when asked: by verify's mismatch report
(`Machine.last_writer`) and
by tests that check that pruned bytes were never read (`read_map`).  Keeping a map per
DDR byte up to date instead would cost more than the transfers themselves: 4 bytes of map
per byte stored, touched in scattered pages.
"""
from __future__ import annotations

import numpy as np

HOST = -1       # the writer of the initial image and of bytes the host wrote


class AccessLog:
    def __init__(self, size: int):
        self.size = size
        self.reads: list = []        # (start, shape, strides) boxes of bytes, or (index array,)
        self.writes: list = []       # (pc, start, shape, strides) or (pc, index array)
        self._writer = None          # replayed maps (None: stale)
        self._read = None

    # recording (the DMA instructions and the host)
    def read_box(self, start: int, byte_shape: tuple, byte_strides: tuple) -> None:
        self.reads.append((start, byte_shape, byte_strides))
        self._read = None

    def read_bytes(self, idx: np.ndarray) -> None:
        self.reads.append((np.array(idx, dtype=np.int64).reshape(-1),))
        self._read = None

    def write_box(self, pc: int, start: int, byte_shape: tuple, byte_strides: tuple) -> None:
        self.writes.append((pc, start, byte_shape, byte_strides))
        self._writer = None

    def write_bytes(self, pc: int, idx: np.ndarray) -> None:
        self.writes.append((pc, np.array(idx, dtype=np.int64).reshape(-1)))
        self._writer = None

    def extend(self, reads: list, writes: list) -> None:
        """Append entries recorded ahead of time (a translation block's, in program
        order: the same entries its words would record one by one)."""
        if reads:
            self.reads.extend(reads)
            self._read = None
        if writes:
            self.writes.extend(writes)
            self._writer = None

    # replayed maps
    def read_map(self) -> np.ndarray:
        """uint8 per DDR byte: 1 if any logged read touched it."""
        if self._read is None:
            m = np.zeros(self.size, dtype=np.uint8)
            for e in self.reads:
                if len(e) == 1:
                    m[e[0]] = 1
                else:
                    np.ndarray(e[1], np.uint8, m, e[0], e[2])[...] = 1
            self._read = m
        return self._read

    def writer_map(self) -> np.ndarray:
        """int32 per DDR byte: the pc of the last logged write, HOST (-1) if none."""
        if self._writer is None:
            m = np.full(self.size, HOST, dtype=np.int32)
            for e in self.writes:
                if len(e) == 2:
                    m[e[1]] = e[0]
                else:
                    pc, start, shape, strides = e
                    np.ndarray(shape, np.int32, m, 4 * start,
                               tuple(4 * s for s in strides))[...] = pc
            self._writer = m
        return self._writer
