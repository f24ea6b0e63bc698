"""The ISA table, its encoding and the generated docs."""
from pathlib import Path

import pytest

from edgec.isa import docgen
from edgec.isa.encoding import decode, encode
from edgec.isa.errors import EdgecError
from edgec.isa.table import INSTRS, WORD_BYTES

ROOT = Path(__file__).resolve().parents[2]


def test_docs_isa_md_is_generated_from_the_table():
    assert (ROOT / "docs" / "isa.md").read_text() == docgen.render(), \
        "docs/isa.md is stale: run python -m edgec.isa.docgen > docs/isa.md"


@pytest.mark.parametrize("ins", INSTRS, ids=lambda i: i.name)
def test_every_field_round_trips_at_its_extremes(ins):
    for pick in (min, max):
        vals = {}
        for f in ins.fields:
            lo, hi = ((-(1 << (f.bits - 1)), (1 << (f.bits - 1)) - 1) if f.signed
                      else (0, (1 << f.bits) - 1))
            vals[f.name] = pick(lo, hi)
        w = encode(ins.name, dep=pick(0, 15), **vals)
        assert len(w) == WORD_BYTES
        got, fields = decode(w)
        assert got is ins and fields == {"dep": pick(0, 15), **vals}


def test_encode_rejects_overflowing_and_unknown_fields():
    with pytest.raises(EdgecError, match="does not fit"):
        encode("RQ", shift=200)
    with pytest.raises(EdgecError, match="unknown field"):
        encode("END", bogus=1)
    with pytest.raises(EdgecError, match="unknown opcode"):
        decode(bytes([250]) + bytes(WORD_BYTES - 1))
    with pytest.raises(EdgecError, match="stray bits"):
        decode(bytes(WORD_BYTES - 1) + b"\x80")


def _random_words(rng, count):
    words = []
    for _ in range(count):
        ins = INSTRS[int(rng.integers(len(INSTRS)))]
        vals = {}
        for f in ins.fields:
            lo, hi = ((-(1 << (f.bits - 1)), (1 << (f.bits - 1)) - 1) if f.signed
                      else (0, (1 << f.bits) - 1))
            vals[f.name] = int(rng.choice([lo, hi, int(rng.integers(lo, hi, endpoint=True))]))
        words.append(encode(ins.name, dep=int(rng.integers(16)), **vals))
    return words


def test_decode_all_equals_decode_word_by_word():
    import numpy as np
    from edgec.isa.encoding import decode_all
    rng = np.random.default_rng(7)
    words = _random_words(rng, 400)
    words += words[:50]                                  # repeated words share a dict
    got = decode_all(b"".join(words))
    want = [decode(w, i) for i, w in enumerate(words)]
    assert [(i.name, f) for i, f in got] == [(i.name, f) for i, f in want]
    assert [list(f) for _, f in got] == [list(f) for _, f in want]      # field order
    for bad, why in ((bytes([200]) + bytes(WORD_BYTES - 1), "unknown opcode"),
                     (words[3][:-1] + b"\x80", "stray bits")):
        code = b"".join(words[:9] + [bad] + words[9:])
        with pytest.raises(EdgecError, match=f"instruction 9.*{why}|{why}.*instruction 9"):
            decode_all(code)


def test_encode_all_equals_encode_word_by_word():
    import numpy as np
    from edgec.isa.encoding import encode_all
    rng = np.random.default_rng(11)
    words = _random_words(rng, 400)
    decoded = [decode(w) for w in words]
    names = [i.name for i, _ in decoded]
    deps = [f.pop("dep") for _, f in decoded]
    fields = [{k: v for k, v in f.items() if v or rng.random() < 0.5}    # omitted = 0
              for _, f in decoded]
    assert encode_all(names, deps, fields) == b"".join(words)
    # the first refused instruction, in program order, raises encode()'s error
    bad = [dict(f) for f in fields]
    bad[7], bad[300] = {**bad[7], "bogus": 1}, {**bad[300], "bogus": 2}
    with pytest.raises(EdgecError, match=f"{names[7]}: unknown field"):
        encode_all(names, deps, bad)
    bad = [dict(f) for f in fields]
    k = next(i for i in range(5, 400) if names[i] == "RQ")
    bad[k] = {**bad[k], "shift": 200}
    with pytest.raises(EdgecError, match="RQ: field shift=200 does not fit"):
        encode_all(names, deps, bad)
