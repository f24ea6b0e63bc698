"""Generate docs/isa.md from the ISA table:  python -m edgec.isa.docgen > docs/isa.md"""
from __future__ import annotations

from . import table as T


def render() -> str:
    out = ["# edgec ISA", "",
           "Generated from `isa/table.py` by `python -m edgec.isa.docgen`; do not edit by hand.",
           "", T.__doc__.strip(), "",
           f"Every instruction is one {T.WORD_BYTES}-byte ({T.WORD_BITS}-bit) little-endian "
           "word; fields are packed from bit 0 in the order listed.", "",
           "| mnemonic | opcode | queue | summary |", "|---|---|---|---|"]
    for i in T.INSTRS:
        out.append(f"| {i.name} | {i.opcode} | {i.queue} | {i.doc.split('. ')[0]} |")
    for i in T.INSTRS:
        out += ["", f"## {i.name} (opcode {i.opcode}, {i.queue} queue)", "", i.doc, "",
                "| bits | field | width | meaning |", "|---|---|---|---|"]
        pos = 0
        for f in i.all_fields:
            sign = " (signed)" if f.signed else ""
            out.append(f"| {pos}..{pos + f.bits - 1} | {f.name} | {f.bits}{sign} | {f.doc} |")
            pos += f.bits
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render(), end="")
