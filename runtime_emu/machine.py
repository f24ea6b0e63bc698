"""The emulated accelerator: executes a prog.bin Program bit-exactly.

    m = Machine(program, target)    # decodes every word up front
    counters = m.run()              # until END; TrapError on any fault

State: `ddr` (uint8, program.ddr_size bytes, data section at 0), `bufs` {"IBUF": int8,
"WBUF": int8, "ABUF": int32, "XBUF": int32 (XBUF_WORDS words, the exponent table)}, `seed` (uint32 register, 0 until SEED), `log` (accesslog.py:
what every DMA read and wrote; `read_map`, uint8 per DDR byte, 1 once any DMA read it, and
`last_writer`, int32 per DDR byte, the index of the instruction that last stored it or -1
for the initial image / host, are replayed from it on demand), `counters`.
Execution is serial in program order.  Each executed instruction's cost (its row of
isa/table.py: Instr.cycles, formulas in isa/machine.py; DMA: latency + ceil(bytes /
bytes_per_cycle); MAC: array passes; vector: 4 + ceil(elements / lanes); SEED/SYNC/END:
1) goes to the timing model (isa/timeline.py): load, compute and store queues
overlap, synchronised by the dependency tokens; `cycles` is the finish time.  `_execute`
is the one place that counts an executed instruction and its cost; the instruction
functions (ops.py) only compute and trap.

Speed: the code is decoded once, vectorised (isa.encoding.decode_all); every instruction
runs as numpy on whole tiles (LD/ST through strided views of DDR, MAC as exact batched
matmuls on strided im2col windows, see mac.py), never element by element; `run` holds
numpy's OpenBLAS to one thread (blas.py).
"""
from __future__ import annotations

import numpy as np

from edgec.isa.container import Program
from edgec.isa.encoding import decode, decode_all
from edgec.isa.errors import EdgecError, TrapError
from edgec.isa.table import BY_OPCODE, INSTRS, WORD_BYTES, XBUF_WORDS
from edgec.isa.target import Target, ddr_error, mismatch
from edgec.isa.timeline import Timeline, TokenError

from . import fastrun, translate
from .accesslog import AccessLog
from .blas import one_blas_thread
from .ops import OPS
from .state import Trap

COUNTER_NAMES = ("instructions", "macs", "ddr_read_bytes", "ddr_write_bytes", "cycles",
                 "cycles_dma", "cycles_mac", "cycles_vector")


class Machine:
    # run() through translation blocks: True always, False never (the interpreter), None
    # (default) once the process has run the same code before (translate.hot)
    translate: bool | None = None

    def __init__(self, program: Program, target: Target, translate: bool | None = None):
        if program.target_fp != target.fingerprint:
            raise EdgecError(mismatch(program, target))
        if len(program.code) % WORD_BYTES:
            raise EdgecError(f"code section is {len(program.code)} bytes, not a multiple "
                             f"of the {WORD_BYTES}-byte instruction word")
        if program.ddr_size > target.ddr_bytes:
            raise ddr_error(target, program.ddr_size)
        if len(program.data) > program.ddr_size:
            raise EdgecError(f"data section ({len(program.data)} bytes) larger than DDR "
                             f"({program.ddr_size} bytes)")
        self.program = program
        self.target = target
        if translate is not None:
            self.translate = translate
        try:
            self.instrs = decode_all(program.code)      # [(Instr, fields)], vectorised
        except EdgecError:
            self._trap_malformed(program.code)
        try:
            self.ddr = np.zeros(program.ddr_size, dtype=np.uint8)
            self.bufs = {"IBUF": np.zeros(target.ibuf, dtype=np.int8),
                         "WBUF": np.zeros(target.wbuf, dtype=np.int8),
                         "ABUF": np.zeros(target.abuf, dtype=np.int32),
                         "XBUF": np.zeros(XBUF_WORDS, dtype=np.int32)}
        except MemoryError:
            raise EdgecError(f"cannot allocate the emulated memories ({program.ddr_size} DDR "
                             f"bytes) on this host") from None
        self.ddr[:len(program.data)] = np.frombuffer(program.data, dtype=np.uint8)
        self.log = AccessLog(program.ddr_size)
        self.seed = 0
        self.pc = 0
        self.halted = False
        self.counters = {k: 0 for k in COUNTER_NAMES}
        self.counters.update({i.name: 0 for i in INSTRS})
        self.timing = Timeline(target.ddr_latency, self.counters)

    @staticmethod
    def _trap_malformed(code: bytes) -> None:
        """TrapError for the first malformed word of `code` (decode_all found one)."""
        for i in range(len(code) // WORD_BYTES):
            word = code[i * WORD_BYTES:(i + 1) * WORD_BYTES]
            try:
                decode(word, i)
            except EdgecError as e:
                ins = BY_OPCODE.get(word[0])
                raise TrapError(i, ins.name if ins else f"opcode {word[0]}",
                                f"malformed word: {e}") from None
        raise AssertionError("decode_all refused a code section that decode() accepts")

    # convenience views
    @property
    def read_map(self) -> np.ndarray:
        """uint8 per DDR byte: 1 once any DMA of this run read it (replayed from `log`)."""
        return self.log.read_map()

    @property
    def last_writer(self) -> np.ndarray:
        """int32 per DDR byte: the index of the instruction that last stored it, -1 for
        the initial image or the host (replayed from `log`)."""
        return self.log.writer_map()

    @property
    def ibuf(self) -> np.ndarray:
        return self.bufs["IBUF"]

    @property
    def wbuf(self) -> np.ndarray:
        return self.bufs["WBUF"]

    @property
    def abuf(self) -> np.ndarray:
        return self.bufs["ABUF"]

    @property
    def xbuf(self) -> np.ndarray:
        return self.bufs["XBUF"]

    def step(self) -> None:
        """Execute the instruction at `pc` (TrapError on a fault, or past the end)."""
        if self.halted:
            raise EdgecError("the machine has already stopped (END executed)")
        self._execute(1)

    def run(self) -> dict:
        """Run to END; returns the counters.  Straight-line code: at most n_instr steps.
        From pc 0 through the translation blocks (fastrun.py: the same results, counters
        and traps) when `translate` says so, else the interpreter."""
        if not self.halted:
            with one_blas_thread():           # tile-sized matmuls: threads only cost
                if self.pc == 0 and (self.translate or (self.translate is None
                                                        and translate.hot(self))):
                    fastrun.run(self)
                else:
                    self._execute(len(self.instrs) + 1)
        return dict(self.counters)

    def _execute(self, count: int) -> None:
        """Execute up to `count` instructions from `pc`, stopping after END.  The only
        place that counts an executed instruction: its cost goes to the timing model,
        which places it on its queue (Trap on a token-protocol violation)."""
        instrs, n, c, tg = self.instrs, len(self.instrs), self.counters, self.target
        issue = self.timing.issue
        # mnemonic -> (implementation, cycle formula), looked up per run (benchmarks wrap
        # OPS entries to time them)
        step = {i.name: (OPS[i.name], i.cycles) for i in INSTRS}
        for _ in range(count):
            pc = self.pc
            if pc >= n:
                raise TrapError(pc, "-", f"ran past the last instruction ({n} "
                                "instructions) without END")
            ins, fields = instrs[pc]
            name = ins.name
            run, cycles = step[name]
            try:
                run(self, fields)
                issue(name, fields["dep"], cycles(fields, tg))
            except (Trap, TokenError) as t:
                raise TrapError(pc, name, str(t)) from None
            c["instructions"] += 1
            c[name] += 1
            self.pc = pc + 1
            if self.halted:
                return
