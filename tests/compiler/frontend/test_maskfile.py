"""user.mask parsing: format, normalisation and every located error."""
import pytest

from edgec.compiler.mask.file import parse_mask
from edgec.isa.errors import EdgecError

LAYERS = {"conv1": 16, "features.3": 10, "fc": 10, "0": 4, "layer1.0.conv2": 8}


def parse(text, logits="fc"):
    return parse_mask("user.mask", LAYERS, logits, text=text)


def err(text, logits="fc"):
    with pytest.raises(EdgecError) as ei:
        parse(text, logits)
    msg = str(ei.value)
    assert "\n" not in msg
    return msg


def test_design_example_and_normalisation():
    text = ("# kept output channels, by module name\n"
            "conv1: 0-5, 8, 10-15\n"
            "\n"
            "   \n"
            "features.3: 0 2 4 6-9   # trailing comment\n"
            "layer1.0.conv2: 7,1 ,1, 3-4 2-2\n"
            "0:3")
    assert parse(text) == {
        "conv1": [0, 1, 2, 3, 4, 5, 8, 10, 11, 12, 13, 14, 15],
        "features.3": [0, 2, 4, 6, 7, 8, 9],
        "layer1.0.conv2": [1, 2, 3, 4, 7],
        "0": [3],
    }
    assert parse("") == {}
    assert parse("# only a comment\n\n") == {}
    assert parse("conv1: 3\r\nfeatures.3: 1\r\n") == {"conv1": [3], "features.3": [1]}


def test_reads_file(tmp_path):
    p = tmp_path / "user.mask"
    p.write_text("conv1: 1-2\n")
    assert parse_mask(str(p), LAYERS, "fc") == {"conv1": [1, 2]}
    with pytest.raises(EdgecError, match="no such file"):
        parse_mask(str(tmp_path / "missing.mask"), LAYERS, "fc")


def test_syntax_error_missing_colon():
    assert err("conv1 0-5") == "user.mask:1:7: syntax error: unexpected '0', expected ':'"


def test_syntax_errors_say_what_was_expected():
    assert err("conv1: 0,,1").startswith("user.mask:1:10: syntax error: unexpected ','")
    assert "expected a channel index" in err("conv1: 0,,1")
    assert err("conv1: 1,") == ("user.mask:1:10: syntax error: unexpected end of file, "
                                "expected a channel index")
    m = err("conv1: 1\nfeatures.3: 2 $")
    assert m.startswith("user.mask:2:15: syntax error: unexpected character '$'")
    assert "end of line" in m
    assert err("# c\n  conv1: 1 conv2").startswith("user.mask:2:12: syntax error: unexpected 'conv2'")


def test_unknown_layer_suggests():
    m = err("conv1: 1\n  conv2: 1")
    assert m.startswith("user.mask:2:3: unknown layer 'conv2'")
    assert "did you mean 'conv1'" in m
    m = err("zzz: 1")
    assert m.startswith("user.mask:1:1: unknown layer 'zzz'") and "features.3" in m


def test_index_out_of_range_column():
    assert err("conv1: 0-5, 8, 10-16").startswith(
        "user.mask:1:19: channel index 16 out of range for layer 'conv1'")
    assert "0-15" in err("conv1: 99")
    assert err("0: 4").startswith("user.mask:1:4: channel index 4 out of range")


def test_reversed_range():
    m = err("features.3: 1, 7-3")
    assert m.startswith("user.mask:1:16: ") and "7-3" in m


def test_empty_keep_list():
    m = err("conv1: 1\nfeatures.3:   # nothing kept\n")
    assert m.startswith("user.mask:2:1: empty keep list for layer 'features.3'")


def test_duplicate_layer():
    m = err("conv1: 1\n\nconv1: 2\n")
    assert m.startswith("user.mask:3:1: duplicate layer 'conv1'") and "line 1" in m


def test_logits_layer_cannot_be_masked():
    m = err("conv1: 1\nfc: 0-4")
    assert m.startswith("user.mask:2:1: layer 'fc' produces the logits")
    assert parse("fc: 0-4", logits=None) == {"fc": [0, 1, 2, 3, 4]}
