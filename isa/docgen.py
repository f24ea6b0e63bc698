"""Generate docs/isa.md from the ISA table:  python -m edgec.isa.docgen > docs/isa.md"""
from __future__ import annotations

from . import table as T


def _doc(fn) -> str:
    return " ".join((fn.__doc__ or "").split())


def _model(i) -> list[str]:
    """The instruction's machine model (isa/machine.py) in words."""
    port = "; its transfer waits for the DDR port" if i.ddr_port else ""
    wait = "; waits for every queue" if i.barrier else ""
    return [f"- Unit: {i.unit} (busy cycles in cycles_{i.unit}){port}{wait}.",
            f"- Reads / writes: {_doc(i.footprint)}",
            f"- Cycles: {_doc(i.cycles)}"]


def render() -> str:
    out = ["# edgec ISA", "",
           "Generated from `isa/table.py` by `python -m edgec.isa.docgen`; do not edit by hand.",
           "", T.__doc__.strip(), "",
           f"Every instruction is one {T.WORD_BYTES}-byte ({T.WORD_BITS}-bit) little-endian "
           "word; fields are packed from bit 0 in the order listed.", "",
           "| mnemonic | opcode | queue | unit | summary |", "|---|---|---|---|---|"]
    for i in T.INSTRS:
        out.append(f"| {i.name} | {i.opcode} | {i.queue} | {i.unit} | "
                   f"{i.doc.split('. ')[0]} |")
    for i in T.INSTRS:
        out += ["", f"## {i.name} (opcode {i.opcode}, {i.queue} queue)", "", i.doc, "",
                *_model(i), "", "| bits | field | width | meaning |", "|---|---|---|---|"]
        pos = 0
        for f in i.all_fields:
            sign = " (signed)" if f.signed else ""
            valid = (f" Valid: {f.valid[0]}..{f.valid[1]} (the compiler and the assembler "
                     "refuse others; the machine traps)." if f.valid else "")
            out.append(f"| {pos}..{pos + f.bits - 1} | {f.name} | {f.bits}{sign} | "
                       f"{f.doc}{valid} |")
            pos += f.bits
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render(), end="")
