"""Loading the lark grammars that ship beside the compiler's modules (one mechanism for
user.mask, assembly and the IR text forms).

Building an LALR parser from a grammar (lark's grammar analysis) costs about 20 ms per
grammar, more than `edgec remask` spends on its own work.  So the built parser is kept the
way Python keeps bytecode: lark serialises it (``Lark.memo_serialize``, plain dicts, lists,
strings and numbers), marshal writes that to ``__pycache__/<grammar>.<key>.lalr`` next to
the grammar, and later processes load it with ``Lark.load`` (about 1 ms).  The key hashes
the grammar text, the parser options and the lark version, so an edited grammar or another
lark builds anew; a missing, unreadable or unwritable cache just means building.  Like
.pyc files, nothing is written when Python runs with -B / PYTHONDONTWRITEBYTECODE, and the
cache holds data only: no pickle, nothing in it is executed.
"""
from __future__ import annotations

import hashlib
import marshal
import os
import sys
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
    text = "\n".join(text)
    opts = dict(parser="lalr", propagate_positions=True, maybe_placeholders=placeholders)
    key = hashlib.sha256(repr((text, sorted(opts.items()), lark.__version__,
                               marshal.version)).encode()).hexdigest()[:16]
    stem = os.path.join(here, "__pycache__", "+".join(grammar_files))
    try:
        with open(f"{stem}.{key}.lalr", "rb") as f:
            return lark.Lark.load(marshal.load(f))
    except Exception:      # noqa: BLE001 - no usable cache (absent, stale format): build
        pass
    parser = lark.Lark(text, **opts)
    if not sys.dont_write_bytecode:
        _save(parser, stem, key)
    return parser


def _save(parser: lark.Lark, stem: str, key: str) -> None:
    """Write the cache file for `parser` (atomically; stale keys removed); never fails."""
    from lark.grammar import Rule
    from lark.lexer import TerminalDef
    data, memo = parser.memo_serialize([TerminalDef, Rule])
    path, tmp = f"{stem}.{key}.lalr", f"{stem}.{key}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(stem), exist_ok=True)
        with open(tmp, "wb") as f:
            marshal.dump({"data": data, "memo": memo}, f)
        os.replace(tmp, path)
        folder, name = os.path.split(stem)
        for old in os.listdir(folder):
            if old.startswith(name + ".") and old.endswith(".lalr") \
                    and old != os.path.basename(path):
                os.unlink(os.path.join(folder, old))
    except (OSError, ValueError):
        try:
            os.unlink(tmp)
        except OSError:
            pass


def read_source(path: str, what: str) -> str:
    """The text of a file that one of the grammars parses (`what`: "mask", "assembly"),
    with one clear error naming the file when it is missing or unreadable, or when it is
    recognisably another kind of file (isa/filekind.py)."""
    import os

    from edgec.isa import filekind
    from edgec.isa.errors import EdgecError
    if os.path.isfile(path):
        kind = {"mask": (filekind.MASK, "a user.mask"),
                "assembly": (filekind.ASM, "edgec assembly")}[what]
        filekind.check_kind(path, kind[1], (kind[0],))
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise EdgecError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise EdgecError(f"{path}: cannot read {what} file: {e}") from None
