"""Parse a user.mask file (grammar: mask.lark, next to this file).

``parse_mask`` returns {layer name: sorted, deduplicated kept output channels}; layers not
listed keep every channel.  Every problem is an :class:`EdgecError` "FILE:LINE:COL: ...".
A layer name is written plain (letters, digits, '_', '.', and '-' after a letter or '_')
or, whatever torch allows in a module name, double-quoted with JSON escapes
(``mask_name`` writes the form that reads back to the same name).
This module imports no torch: ``edgec remask`` uses it on its own.
"""
from __future__ import annotations

import json
import re

import lark

from edgec.isa.errors import EdgecError

from ..grammars import lalr_parser, read_source

#: the plain form of a layer name (the grammar's NAME)
PLAIN_NAME = re.compile(r"([0-9][0-9.]*)?[A-Za-z_][A-Za-z_0-9.\-]*|[0-9][0-9.]*")

_HUMAN = {
    "NAME": "a layer name",
    "QNAME": "a layer name",
    "INT": "a channel index",
    "COLON": "':'",
    "COMMA": "','",
    "MINUS": "'-'",
    "_NL": "end of line",
    "$END": "end of file",
}


def _parser() -> lark.Lark:
    return lalr_parser(__file__, "mask.lark")


def _expected(names) -> str:
    shown = sorted({_HUMAN.get(n, n) for n in names})
    if not shown:
        return ""
    if len(shown) == 1:
        return f", expected {shown[0]}"
    return ", expected " + ", ".join(shown[:-1]) + " or " + shown[-1]


def _tok_text(tok) -> str:
    if tok.type == "$END":
        return "end of file"
    if tok.type == "_NL":
        return "end of line"
    return repr(str(tok))


def _short(digits: str) -> str:
    return digits if len(digits) <= 20 else f"{digits[:8]}...({len(digits)} digits)"


def mask_name(name: str) -> str:
    """A module name as a mask file writes it: plain where the grammar's NAME reads it
    back, else double-quoted with JSON escapes (all of them ASCII where the name holds
    a character that is not printable)."""
    if PLAIN_NAME.fullmatch(name):
        return name
    return json.dumps(name, ensure_ascii=not name.isprintable())


def mask_line(name: str, kept: list[int]) -> str:
    """One mask file line: the name and its kept channels as ranges."""
    return f"{mask_name(name)}: {ranges(kept)}"


def _name_of(path: str, tok) -> str:
    if tok.type == "NAME":
        return str(tok)
    try:
        return json.loads(str(tok))
    except json.JSONDecodeError as e:
        raise EdgecError(f"{path}:{tok.line}:{tok.column + e.pos}: bad quoted layer name: "
                         f"{e.msg} (a JSON string: escapes \\\" \\\\ \\n \\t \\uXXXX ...)") \
            from None


class MaskSpec(dict):
    """{layer: kept channels}, plus ``where[layer]`` = "FILE:LINE:COL" of its line."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.where: dict[str, str] = {}


def parse_mask(path: str, layers: dict[str, int], logits_layer: str | None,
               text: str | None = None, refuse: dict[str, str] | None = None) -> MaskSpec:
    """Parse ``path`` (or ``text``, reported as ``path``) against ``layers``.

    ``layers`` maps each Conv2d/Linear module name to its number of output channels;
    ``logits_layer`` is the module producing the logits (it cannot be masked);
    ``refuse`` maps modules that exist but cannot be masked to the reason.
    """
    if text is None:
        text = read_source(path, "mask")
    try:
        tree = _parser().parse(text)
    except lark.exceptions.UnexpectedToken as e:
        tok = e.token
        line, col = e.line, e.column
        if tok.type == "$END":
            lines = text.split("\n")
            line = len(lines)
            col = len(lines[-1]) + 1
        glued = tok.type != "$END" and tok.start_pos and text[tok.start_pos - 1] not in " \t"
        hint = ("; a layer name with other characters than letters, digits, '_', '.' "
                "and '-' is written in double quotes" if "COLON" in e.expected and glued
                else "")
        raise EdgecError(f"{path}:{line}:{col}: syntax error: unexpected {_tok_text(tok)}"
                         f"{_expected(e.expected)}{hint}") from None
    except lark.exceptions.UnexpectedCharacters as e:
        ch = text[e.pos_in_stream] if e.pos_in_stream < len(text) else ""
        raise EdgecError(f"{path}:{e.line}:{e.column}: syntax error: unexpected character "
                         f"{ch!r}{_expected(e.allowed or ())}") from None
    except lark.exceptions.UnexpectedEOF as e:
        lines = text.split("\n")
        raise EdgecError(f"{path}:{len(lines)}:{len(lines[-1]) + 1}: syntax error: "
                         f"unexpected end of file{_expected(e.expected)}") from None

    result = MaskSpec()
    first_line: dict[str, int] = {}
    for entry in tree.children:
        name_tok, items = entry.children[0], entry.children[1]
        name = _name_of(path, name_tok)
        where = f"{path}:{name_tok.line}:{name_tok.column}"
        if refuse and name in refuse:
            raise EdgecError(f"{where}: layer {name!r} cannot be masked: {refuse[name]}")
        if name not in layers:
            import difflib      # here: remask's start-up does not pay for it
            close = difflib.get_close_matches(name, list(layers), n=3, cutoff=0.5)
            hint = (f"; did you mean {', '.join(repr(c) for c in close)}?" if close else
                    f"; maskable layers (Conv2d/Linear): {', '.join(sorted(layers)) or 'none'}")
            raise EdgecError(f"{where}: unknown layer {name!r}{hint}")
        if name in first_line:
            raise EdgecError(f"{where}: duplicate layer {name!r} (already listed on line "
                             f"{first_line[name]}); list each layer once")
        first_line[name] = name_tok.line
        if logits_layer is not None and name == logits_layer:
            raise EdgecError(f"{where}: layer {name!r} produces the logits; its outputs "
                             f"(the classes) cannot be masked")
        n = layers[name]
        keep: set[int] = set()
        for it in items.children:
            toks = it.children
            for t in toks:       # int() refuses > 4300 digits: check the size as text first
                if len(str(t).lstrip("0")) > 18:
                    raise EdgecError(f"{path}:{t.line}:{t.column}: channel index "
                                     f"{_short(str(t))} out of range for layer {name!r} (it "
                                     f"has {n} output channels: 0-{n - 1})")
            lo, hi = int(toks[0]), int(toks[-1])
            if it.data == "range" and lo > hi:
                raise EdgecError(f"{path}:{toks[0].line}:{toks[0].column}: empty range "
                                 f"{lo}-{hi} (lower bound > upper bound); write {hi}-{lo}")
            for t in toks:
                if int(t) >= n:
                    raise EdgecError(f"{path}:{t.line}:{t.column}: channel index {int(t)} out "
                                     f"of range for layer {name!r} (it has {n} output "
                                     f"channels: 0-{n - 1})")
            keep.update(range(lo, hi + 1))
        if not keep:
            raise EdgecError(f"{where}: empty keep list for layer {name!r}; keep at least "
                             f"one channel (omit the line to keep all)")
        result[name] = sorted(keep)
        result.where[name] = where
    return result


def drop_full(mask: dict, layers: dict[str, int]) -> dict:
    """``mask`` without the lines that keep every channel of their layer (in place): such a
    line is the same as no line, so it gets no index table and meets an unlisted layer at
    a residual add without complaint."""
    for name in [k for k, v in mask.items() if k in layers
                 and sorted(set(v)) == list(range(layers[k]))]:
        del mask[name]
        getattr(mask, "where", {}).pop(name, None)
    return mask


def ranges(kept: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5" (the mask file's notation)."""
    out, i = [], 0
    while i < len(kept):
        j = i
        while j + 1 < len(kept) and kept[j + 1] == kept[j] + 1:
            j += 1
        out.append(f"{kept[i]}-{kept[j]}" if j > i else f"{kept[i]}")
        i = j + 1
    return ", ".join(out)


def residual_error(mask: dict, names, loc: str | None, layer: str | None) -> EdgecError:
    """The error for two differently masked tensors meeting at a residual add: ``names``
    are the layers whose channels meet there (one not in the mask keeps every channel;
    None: the model's input), located at the first listed layer's line."""
    where = getattr(mask, "where", {})
    at = next((f"{where[k]}: " for k in names if k in where), "")
    shown = [f"'{k}' keeps {ranges(mask[k])}" if k in mask else
             f"'{k}' keeps all its channels (no line in the mask)" if k else
             "the model's input keeps all its channels" for k in names]
    fix = ("give both layers the same kept list" if all(names) else
           "the add's other operand is the model's input, which cannot be masked: drop the "
           "line")
    return EdgecError(f"{at}residual add at {loc or '?'} (layer {layer!r}): the channels that "
                      f"meet there must be masked identically, but {shown[0]} and {shown[1]}; "
                      f"{fix}")
