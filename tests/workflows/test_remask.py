"""edgec remask: another mask with the same kept counts gives the bytes of a fresh compile;
anything else is a located error and writes nothing."""
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgec.compiler.workflows.cli import main
from edgec.compiler.driver import compile_model
from edgec.compiler.workflows.verify import verify
from edgec.isa.errors import EdgecError

from test_e2e_blocks import BLOCK, write

LENET = "examples/lenet/model.py"
TINY = str(Path(__file__).parents[1] / "data" / "tiny.toml")
LENET_A = "conv1: 0-5\nconv2: 0-3, 6, 8-11\nfc1: 0-19, 24 26\n"
LENET_B = "# same counts, other channels\nconv1: 2-7\nconv2: 1-4, 7, 10-13\nfc1: 5-26\n"


def _mask(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def _remask(tmp_path, prog_blob, mask, capsys):
    src, out = tmp_path / "a.bin", tmp_path / "b.bin"
    src.write_bytes(prog_blob)
    out.unlink(missing_ok=True)
    rc = main(["remask", str(src), "--mask", mask, "-o", str(out)])
    return rc, (out.read_bytes() if out.exists() else None), capsys.readouterr()


def _table(prog_blob, layer):
    from edgec.isa.container import read_program
    p = read_program(prog_blob)
    s = p.symbol(f"tab:{layer}")
    return np.frombuffer(p.data, "<i4", s["shape"][0], s["addr"]).tolist()


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    d = tmp_path_factory.mktemp("lenet")
    ma, mb = _mask(d, "a.mask", LENET_A), _mask(d, "b.mask", LENET_B)
    return d, ma, mb, compile_model(LENET, ma, remaskable=True), compile_model(LENET, mb, remaskable=True)


def test_lenet_remask_equals_fresh_compile_and_verifies(lenet, tmp_path, capsys):
    _, ma, mb, ca, cb = lenet
    assert ca.blob != cb.blob
    rc, blob, out = _remask(tmp_path, ca.blob, mb, capsys)
    assert rc == 0 and "wrote" in out.out
    assert blob == cb.blob
    assert _table(blob, "conv1") == [2, 3, 4, 5, 6, 7]        # the file's lists, as written
    assert _table(blob, "fc1") == list(range(5, 27))
    rep = verify(cb)              # the remasked bytes ARE cb's program: run and verify it
    assert rep.bit_exact
    assert min(cos for _, cos, _ in rep.fidelity) > 0.8
    assert np.all(rep.out["grad/conv1.weight"][[0, 1]] == 0)   # pruned under mask B
    rc, back, _ = _remask(tmp_path, blob, ma, capsys)           # and back again
    assert rc == 0 and back == ca.blob


def _span(blob, name):
    """(offset, length) of section ``name`` in a program file (isa/container.py layout)."""
    from edgec.isa.container import HEADER_BYTES, SECTIONS
    lengths = [struct.unpack_from("<Q", blob, 24 + 40 * k)[0] for k in range(len(SECTIONS))]
    k = SECTIONS.index(name)
    return HEADER_BYTES + sum(lengths[:k]), lengths[k]


def test_mask_dependent_bytes_are_a_small_head(lenet):
    """Only the head (mask meta, table symbols) and tables sections differ between two
    masks with the same counts; the tables section holds just the index tables."""
    _, _, _, ca, cb = lenet
    for name in ("code", "data", "symbols"):
        (a, n), (b, m) = _span(ca.blob, name), _span(cb.blob, name)
        assert ca.blob[a:a + n] == cb.blob[b:b + m], name
    off, n = _span(ca.blob, "tables")
    tabs = sorted((s["addr"], s["addr"] + 4 * s["shape"][0]) for s in ca.program.symbols
                  if s["kind"] == "table")
    assert tabs[0][0] == 0 and n == tabs[-1][1] == 4 * 22 + 80   # conv1, conv2, fc1 tables
    assert _span(ca.blob, "head")[1] < 2000 < _span(ca.blob, "symbols")[1]


@pytest.mark.parametrize("section", ["code", "data", "symbols"])
def test_damage_outside_the_head_survives_remask_and_is_caught_on_load(lenet, tmp_path,
                                                                       capsys, section):
    """remask reads only the header, head and tables; it copies the rest with its digest,
    so a damaged byte there is reported when the result is loaded, naming the section."""
    from edgec.isa.container import load_program
    _, _, mb, ca, _ = lenet
    off, n = _span(ca.blob, section)
    bad = bytearray(ca.blob)
    bad[off + n // 2] ^= 0x10
    rc, blob, out = _remask(tmp_path, bytes(bad), mb, capsys)
    assert rc == 0, out.err
    (tmp_path / "b.bin").write_bytes(blob)
    with pytest.raises(EdgecError, match=rf"b\.bin: checksum mismatch in section '{section}'"):
        load_program(str(tmp_path / "b.bin"))
    rc = main(["run", str(tmp_path / "b.bin"), "--input", str(tmp_path / "none.npz"),
               "-o", str(tmp_path / "out.npz")])
    assert rc == 1 and f"checksum mismatch in section '{section}'" in capsys.readouterr().err


def test_remask_without_copy_file_range(lenet, tmp_path, capsys, monkeypatch):
    """Where the kernel cannot copy (another file system, an old kernel), remask copies
    through Python: the same bytes."""
    import os

    def refuse(*a, **k):
        raise OSError(18, "Invalid cross-device link")
    monkeypatch.setattr(os, "copy_file_range", refuse)
    _, _, mb, ca, cb = lenet
    rc, blob, _ = _remask(tmp_path, ca.blob, mb, capsys)
    assert rc == 0 and blob == cb.blob


@pytest.mark.parametrize("section", ["head", "tables", "header", "truncated"])
def test_remask_refuses_damage_it_reads(lenet, tmp_path, capsys, section):
    _, _, mb, ca, _ = lenet
    bad = bytearray(ca.blob)
    if section == "truncated":
        del bad[-100:]
    elif section == "header":
        bad[40] ^= 1                  # in the head section's digest
    else:
        off, n = _span(ca.blob, section)
        bad[off + n - 1] ^= 1
    rc, blob, out = _remask(tmp_path, bytes(bad), mb, capsys)
    want = {"truncated": "do not add up to the file size", "header": "checksum mismatch "
            "in the header"}.get(section, f"checksum mismatch in section '{section}'")
    assert rc == 1 and blob is None and want in out.err and "a.bin: " in out.err, out.err


def test_count_mismatch_names_layer_counts_and_line(lenet, tmp_path, capsys):
    d, _, _, ca, _ = lenet
    bad = _mask(tmp_path, "c.mask", "conv1: 0-5\nconv2: 0-3, 6, 8-11\nfc1: 0-20, 24 26\n")
    rc, blob, out = _remask(tmp_path, ca.blob, bad, capsys)
    err = out.err
    assert rc == 1 and blob is None and err.count("\n") == 1
    assert f"{bad}:3:1: layer 'fc1' keeps 23 channels here but 22 in" in err, err
    assert "recompile with edgec compile" in err
    unlisted = _mask(tmp_path, "d.mask", "conv1: 0-5\nconv2: 0-3, 6, 8-11\n")
    rc, blob, out = _remask(tmp_path, ca.blob, unlisted, capsys)
    assert rc == 1 and blob is None
    assert "layer 'fc1' keeps all 32 (not listed) channels here but 22" in out.err, out.err
    rc, blob, out = _remask(tmp_path, ca.blob, _mask(tmp_path, "e.mask", "conv9: 1\n"), capsys)
    assert rc == 1 and blob is None and "e.mask:1:1: unknown layer 'conv9'" in out.err


def test_full_keep_list_is_no_mask(tmp_path):
    """A line keeping every channel is the same as no line: same program bytes."""
    same = _mask(tmp_path, "g.mask", LENET_A.replace("conv1: 0-5", "conv1: 0-7"))
    nomask = _mask(tmp_path, "h.mask", LENET_A.replace("conv1: 0-5\n", ""))
    assert compile_model(LENET, same, remaskable=True).blob == compile_model(LENET, nomask, remaskable=True).blob


@pytest.mark.slow
def test_residual_block_model_remask_and_tie_error(tmp_path, capsys):
    """BatchNorm, a residual add, depthwise and grouped convs: byte-equal remask; a new mask
    that breaks the residual rule is refused like compile refuses it."""
    path = write(tmp_path, BLOCK)
    ma = _mask(tmp_path, "a.mask", "stem: 0-3\nblock.conv2: 0-3\nblock.conv1: 1 3 5 7\n")
    mb = _mask(tmp_path, "b.mask", "stem: 2-5\nblock.conv2: 2-5\nblock.conv1: 0-3\n")
    ca, cb = compile_model(path, ma, TINY, remaskable=True), compile_model(path, mb, TINY, remaskable=True)
    rc, blob, _ = _remask(tmp_path, ca.blob, mb, capsys)
    assert rc == 0 and blob == cb.blob
    assert verify(cb).bit_exact
    bad = _mask(tmp_path, "c.mask", "stem: 2-5\nblock.conv2: 0-3\nblock.conv1: 0-3\n")
    rc, blob, out = _remask(tmp_path, ca.blob, bad, capsys)
    assert rc == 1 and blob is None
    assert "c.mask:2:1: residual add" in out.err and "masked identically" in out.err, out.err
    assert "'stem' keeps 2-5" in out.err and "'block.conv2' keeps 0-3" in out.err
    with pytest.raises(EdgecError) as e:       # compile says the same
        compile_model(path, bad, TINY, remaskable=True)
    assert out.err == f"edgec: error: {e.value}\n"


def test_remask_imports_no_torch(lenet, tmp_path):
    _, _, mb, ca, cb = lenet
    src, out = tmp_path / "a.bin", tmp_path / "b.bin"
    src.write_bytes(ca.blob)
    code = ("import sys; from edgec.compiler.workflows.cli import main; "
            f"rc = main(['remask', {str(src)!r}, '--mask', {mb!r}, '-o', {str(out)!r}]); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx') "
            "or m.startswith('edgec.compiler.frontend.capture')]; "
            "print(rc, bad); sys.exit(rc or bool(bad))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert out.read_bytes() == cb.blob


def test_program_without_remask_info(lenet, tmp_path, capsys):
    import json

    from edgec.isa.container import read_program, write_program
    _, _, mb, ca, _ = lenet
    p = read_program(ca.blob)
    p.meta = {k: v for k, v in p.meta.items() if k != "remask"}
    rc, blob, out = _remask(tmp_path, write_program(p), mb, capsys)
    assert rc == 1 and blob is None and "recompile with edgec compile" in out.err
    assert json.dumps(read_program(ca.blob).meta["remask"]["layers"]) == \
        '{"conv1": 8, "conv2": 16, "fc1": 32, "fc2": 10}'


def test_calibration_graph_is_the_unmasked_model(tmp_path):
    """mask.unmasked undoes the mask pass (views, compacted shapes, depthwise/BN groups,
    even a mask keeping one channel): every float value equals the unmasked graph's."""
    import copy

    import torch

    from edgec.compiler.frontend.capture import capture, const_values
    from edgec.compiler.frontend.load import load_model
    from edgec.compiler.ir.float_interp import run_float
    from edgec.compiler.passes.mask import MaskPass, unmasked
    from edgec.compiler.passes.quantize import calibration_labels
    path = write(tmp_path, BLOCK)
    model, x = load_model(path)
    g = capture(model, x, path)
    params = {k: v.detach() for k, v in model.named_parameters()}
    params.update(const_values(g, model))
    mask = {"stem": [2], "block.conv2": [2], "block.conv1": [0, 3]}
    u = unmasked(MaskPass(mask).apply(copy.deepcopy(g)))
    ref = MaskPass({}).apply(copy.deepcopy(g))
    labels = calibration_labels(x.shape[0], 5)
    a, b = run_float(ref, x, labels, params), run_float(u, x, labels, params)
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a), [(k, a[k].shape, b[k].shape, float((a[k]-b[k]).abs().max())) for k in a if a[k].shape != b[k].shape or not torch.equal(a[k], b[k])][:4]


def test_cli_builds_one_subcommand_the_same_way():
    """main() builds only the subcommand it runs (start-up time); COMMANDS lists them all
    and the one-subcommand parser reads its arguments like the full one."""
    from edgec.compiler.workflows import cli
    full = cli.build_parser()
    sub = next(a for a in full._actions if a.dest == "cmd")
    assert tuple(sub.choices) == cli.COMMANDS
    for argv in (["remask", "p.bin", "--mask", "u.mask", "-o", "q.bin"],
                 ["disasm", "p.bin"], ["compile", "m.py", "--mask", "u.mask", "--remaskable"]):
        assert vars(cli.build_parser(argv[0]).parse_args(argv)) == vars(full.parse_args(argv))
