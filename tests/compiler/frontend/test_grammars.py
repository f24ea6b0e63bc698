"""compiler/grammars.py: the LALR parser built from a grammar is cached in __pycache__ as
marshalled data; the cached parser parses and fails exactly like a fresh build."""
import shutil
import sys
from pathlib import Path

import lark
import pytest

from edgec.compiler import grammars

MASK = Path(grammars.__file__).parent / "mask" / "mask.lark"
TEXTS = ["conv1: 0-5, 8\nfc: 1 2 3\n", "# c\n\nfc1: 0-3 # k\r\n", "a: 1 -", "a 1", "x: 1,,2",
         "a: 1\n%", "a: 1-2-3", ":", "", "\n\n", "a:"]


def _outcome(parser, text):
    try:
        tree = parser.parse(text)
    except lark.exceptions.UnexpectedInput as e:
        return type(e).__name__, str(e), e.line, e.column
    return tree, [(t, t.type, t.line, t.column) for t in tree.scan_values(lambda v: True)]


@pytest.fixture
def grammar_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    shutil.copy(MASK, tmp_path / "mask.lark")
    grammars.lalr_parser.cache_clear()
    yield tmp_path
    grammars.lalr_parser.cache_clear()


def test_cached_parser_equals_a_fresh_build(grammar_dir):
    mod = str(grammar_dir / "mod.py")
    built = grammars.lalr_parser(mod, "mask.lark")
    files = list((grammar_dir / "__pycache__").glob("mask.lark.*.lalr"))
    assert len(files) == 1
    grammars.lalr_parser.cache_clear()
    cached = grammars.lalr_parser(mod, "mask.lark")
    assert cached.source_path == "<deserialized>" != built.source_path   # loaded, not built
    fresh = lark.Lark(MASK.read_text(), parser="lalr", propagate_positions=True)
    for text in TEXTS:
        assert _outcome(cached, text) == _outcome(fresh, text), text


def test_edited_grammar_builds_anew_and_replaces_the_cache(grammar_dir):
    mod = str(grammar_dir / "mod.py")
    grammars.lalr_parser(mod, "mask.lark")
    old = list((grammar_dir / "__pycache__").glob("*.lalr"))
    g = grammar_dir / "mask.lark"
    g.write_text(g.read_text().replace("INT: /[0-9]+/", "INT: /[0-7]+/"))
    grammars.lalr_parser.cache_clear()
    p = grammars.lalr_parser(mod, "mask.lark")
    new = list((grammar_dir / "__pycache__").glob("*.lalr"))
    assert len(new) == 1 and new != old and p.source_path != "<deserialized>"
    with pytest.raises(lark.exceptions.UnexpectedInput):
        p.parse("a: 8\n")


def test_nothing_written_without_bytecode_and_a_bad_cache_is_rebuilt(grammar_dir,
                                                                     monkeypatch):
    mod = str(grammar_dir / "mod.py")
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    grammars.lalr_parser(mod, "mask.lark")
    assert not (grammar_dir / "__pycache__").exists()
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    grammars.lalr_parser.cache_clear()
    grammars.lalr_parser(mod, "mask.lark")
    (f,) = (grammar_dir / "__pycache__").glob("*.lalr")
    f.write_bytes(b"garbage")
    grammars.lalr_parser.cache_clear()
    p = grammars.lalr_parser(mod, "mask.lark")
    assert p.source_path != "<deserialized>" and _outcome(p, TEXTS[0])[0].data == "start"
