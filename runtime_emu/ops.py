"""Dispatch table: mnemonic -> implementation(machine, fields): computes and traps; the
instruction's cycles come from its row of isa/table.py (Instr.cycles), counted by
machine.Machine._execute.

Every entry of edgec.isa.table.INSTRS must have an implementation (checked at import).
"""
from __future__ import annotations

from edgec.isa.table import INSTRS

from .bnstat import op_bnadapt, op_cstat
from .dma import op_ld, op_ldch, op_seed, op_st, op_stch
from .expupd import op_expupd
from .losst import op_losst
from .mac import op_mac
from .vector import (op_end, op_lossg, op_maxp, op_maxpb, op_rq, op_rsum, op_sgd, op_sync,
                     op_vadd, op_vmask, op_vmulc)

OPS = {
    "END": op_end, "SEED": op_seed, "SYNC": op_sync,
    "LD": op_ld, "LDCH": op_ldch, "ST": op_st, "STCH": op_stch,
    "MAC": op_mac,
    "RQ": op_rq, "VMASK": op_vmask, "MAXP": op_maxp, "MAXPB": op_maxpb,
    "RSUM": op_rsum, "VMULC": op_vmulc, "LOSSG": op_lossg, "SGD": op_sgd, "VADD": op_vadd,
    "CSTAT": op_cstat, "BNADAPT": op_bnadapt,
    "LOSST": op_losst, "EXPUPD": op_expupd,
}

_missing = {i.name for i in INSTRS} - set(OPS)
assert not _missing, f"emulator lacks instructions {_missing}"
