"""Loading the lark grammars that ship beside the compiler's modules (one mechanism for
user.mask, assembly and the IR text forms)."""
from __future__ import annotations

import os
from functools import lru_cache

import lark


@lru_cache(maxsize=None)
def lalr_parser(module_file: str, *grammar_files: str, placeholders: bool = False) -> lark.Lark:
    """An LALR parser (with positions) for the grammar files next to `module_file`,
    concatenated in order."""
    here = os.path.dirname(os.path.abspath(module_file))
    text = []
    for name in grammar_files:
        with open(os.path.join(here, name), encoding="utf-8") as f:
            text.append(f.read())
    return lark.Lark("\n".join(text), parser="lalr", propagate_positions=True,
                     maybe_placeholders=placeholders)
