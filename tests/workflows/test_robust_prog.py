"""Issue 7, robustness of prog.bin and of `edgec run`: every bad program or batch fails with
an EdgecError/TrapError that says where, never another exception, never a hang, and never
touches an existing output file.  (The long fuzz run is benchmarks/fuzz.py.)"""
from __future__ import annotations

import contextlib
import io
import os
import signal
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from edgec.compiler.workflows import cli
from edgec.compiler.driver import compile_model
from edgec.isa.container import (SECTIONS, VERSION, Program, read_program, reseal,
                                  write_program)
from edgec.isa.disasm import disassemble
from edgec.isa.encoding import decode, encode
from edgec.isa.errors import EdgecError, TrapError
from edgec.isa.table import WORD_BYTES
from edgec.isa.target import load_target
from edgec.runtime_emu.host import run_step
from edgec.runtime_emu.machine import Machine

ROOT = Path(__file__).resolve().parents[2]
LENET = ROOT / "examples" / "lenet"
TARGET = load_target()
IBUF, WBUF, ABUF = 0, 1, 2
FAST = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def lenet():
    c = compile_model(str(LENET / "model.py"), str(LENET / "user.mask"))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=tuple(c.example_input.shape)).astype(np.float32)
    y = rng.integers(0, 10, size=x.shape[0]).astype(np.int64)
    return c, x, y


@contextlib.contextmanager
def time_limit(seconds: int):
    """A hang is a failure: the emulator must terminate on every input."""
    def boom(signum, frame):
        raise AssertionError(f"no result within {seconds}s: hang")
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def rehash(body: bytes) -> bytes:
    """An edited file with valid checksums, so that the checks behind them are reached."""
    return reseal(body)


def pipeline(blob: bytes, x, y) -> str:
    """read -> disassemble -> run one step.  'ok', or the message of the EdgecError."""
    with time_limit(30):
        try:
            p = read_program(blob, "fuzz.bin")
            disassemble(p)
            run_step(p, TARGET, x, y)
        except TrapError as e:
            msg = str(e)
            assert f"trap at instruction {e.index} " in msg, msg
            assert 0 <= e.index <= p.n_instr
            return msg
        except EdgecError as e:
            msg = str(e)
            assert msg.strip(), "empty error message"
            return msg
    return "ok"


def rebuild(p: Program, **changes) -> bytes:
    fields = dict(target_fp=p.target_fp, code=p.code, data=p.data, ddr_size=p.ddr_size,
                  symbols=p.symbols, meta=p.meta)
    fields.update(changes)
    return write_program(Program(**fields))


# ---------------------------------------------------------------- container corruption

def test_original_program_runs(lenet):
    c, x, y = lenet
    assert pipeline(c.blob, x, y) == "ok"


@FAST
@given(data=st.data())
def test_bit_flips_are_caught_by_the_checksum(lenet, data):
    c, _, _ = lenet
    bits = data.draw(st.lists(st.integers(0, len(c.blob) * 8 - 1), min_size=1, max_size=8,
                              unique=True))
    blob = bytearray(c.blob)
    for b in bits:
        blob[b // 8] ^= 1 << (b % 8)
    with pytest.raises(EdgecError, match=r"^flip\.bin: "):
        read_program(bytes(blob), "flip.bin")


@FAST
@given(data=st.data())
def test_bit_flips_with_a_valid_checksum_fail_cleanly(lenet, data):
    c, x, y = lenet
    body = bytearray(c.blob[:-32])
    for b in data.draw(st.lists(st.integers(0, len(body) * 8 - 1), min_size=1, max_size=6)):
        body[b // 8] ^= 1 << (b % 8)
    pipeline(rehash(bytes(body)), x, y)


@FAST
@given(cut=st.integers(0, 10**6))
def test_truncation(lenet, cut):
    c, _, _ = lenet
    cut %= len(c.blob)
    with pytest.raises(EdgecError, match=r"^short\.bin: (too short|checksum mismatch|section "
                       r"lengths .* do not add up to the file size)"):
        read_program(c.blob[:cut], "short.bin")


@FAST
@given(version=st.integers(0, 2**16 - 1))
def test_wrong_version(lenet, version):
    assume(version != VERSION)
    c, _, _ = lenet
    body = bytearray(c.blob[:-32])
    struct.pack_into("<H", body, 8, version)
    with pytest.raises(EdgecError, match=rf"v\.bin: format version {version}, .*recompile"):
        read_program(rehash(bytes(body)), "v.bin")


def test_wrong_target_fingerprint(lenet):
    c, x, y = lenet
    tiny = load_target(ROOT / "tests" / "data" / "tiny.toml")
    with pytest.raises(EdgecError, match="compiled for target 'edge-dpu-16x16' .*but the "
                       "target here is 'tiny-test' .*run it without --target"):
        Machine(c.program, tiny)
    with pytest.raises(EdgecError, match="compiled for target 'edge-dpu-16x16'"):
        run_step(c.program, tiny, x, y)
    with pytest.raises(EdgecError, match=r"^p\.bin: compiled for target fingerprint"):
        read_program(c.blob, "p.bin", expect_target=tiny.fingerprint)


# header: a u64 length (and a digest) per section, at 24 + 40 * k
@FAST
@given(k=st.integers(0, len(SECTIONS) - 1), value=st.integers(0, 2**64 - 1))
def test_bad_section_lengths_with_valid_checksum(lenet, k, value):
    c, _, _ = lenet
    off = 24 + 40 * k
    body = bytearray(c.blob[:-32])
    assume(struct.unpack_from("<Q", body, off)[0] != value)
    struct.pack_into("<Q", body, off, value)
    with pytest.raises(EdgecError, match=r"^o\.bin: section lengths .* do not add up"):
        read_program(rehash(bytes(body)), "o.bin")


@FAST
@given(k=st.integers(0, len(SECTIONS) - 2), shift=st.integers(-10**6, 10**6))
def test_moved_section_boundary_with_valid_checksum(lenet, k, shift):
    """Bytes moved from one section to the next, digests made valid: a clean failure (or
    a program that still runs)."""
    c, x, y = lenet
    body = bytearray(c.blob[:-32])
    a, b = (struct.unpack_from("<Q", body, 24 + 40 * j)[0] for j in (k, k + 1))
    shift = max(-a, min(b, shift))
    assume(shift)
    struct.pack_into("<Q", body, 24 + 40 * k, a + shift)
    struct.pack_into("<Q", body, 24 + 40 * (k + 1), b - shift)
    pipeline(rehash(bytes(body)), x, y)


@FAST
@given(ddr=st.integers(0, 2**32 - 1))
def test_ddr_size_field(lenet, ddr):
    c, x, y = lenet
    body = bytearray(c.blob[:-32])
    struct.pack_into("<I", body, 20, ddr)
    pipeline(rehash(bytes(body)), x, y)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                  max_size=3),
    max_leaves=6)


@FAST
@given(data=st.data())
def test_tampered_symbols(lenet, data):
    c, x, y = lenet
    p = c.program
    syms = [dict(s) for s in p.symbols]
    k = data.draw(st.integers(0, len(syms) - 1))
    key = data.draw(st.sampled_from(["name", "kind", "addr", "shape", "dtype", "exp",
                                     "<delete>", "<entry>"]))
    if key == "<entry>":
        syms[k] = data.draw(JSON_VALUES)
    elif key == "<delete>":
        del syms[k][data.draw(st.sampled_from(sorted(syms[k])))]
    else:
        syms[k][key] = data.draw(JSON_VALUES | st.integers(-2, p.ddr_size + 2)
                                 | st.sampled_from(["in:x", "in:labels", "i8", "i32"]))
    pipeline(rebuild(p, symbols=syms), x, y)


@FAST
@given(data=st.data())
def test_tampered_meta(lenet, data):
    c, x, y = lenet
    p = c.program
    meta = {**p.meta, "params": [dict(q) for q in p.meta["params"]]}
    where = data.draw(st.sampled_from(["logits", "params", "param", "meta"]))
    if where == "meta":
        meta = data.draw(JSON_VALUES)
    elif where == "param":
        q = meta["params"][data.draw(st.integers(0, len(meta["params"]) - 1))]
        q[data.draw(st.sampled_from(sorted(q)))] = data.draw(
            JSON_VALUES | st.sampled_from([s["name"] for s in p.symbols])
            | st.lists(st.integers(0, 40), max_size=3))
    else:
        meta[where] = data.draw(JSON_VALUES | st.sampled_from([s["name"] for s in p.symbols]))
    pipeline(rebuild(p, meta=meta), x, y)


@pytest.mark.parametrize("change", [
    {"in_block": 2**32 - 1}, {"shape": [2**31, 2**31]}, {"shape": [0, 2**32 - 1]},
    {"out_tab": "in:x"}, {"master": "in:x"}, {"grad": "rng_seed"}])
def test_inconsistent_param_meta(lenet, change):
    """meta entries that disagree with the symbols: an error naming the parameter."""
    c, x, y = lenet
    p = c.program
    params = [dict(q) for q in p.meta["params"]]
    k = next(i for i, q in enumerate(params) if q.get("in_tab")) if "in_block" in change \
        else next(i for i, q in enumerate(params) if q.get("out_tab"))
    params[k].update(change)
    msg = pipeline(rebuild(p, meta={**p.meta, "params": params}), x, y)
    assert msg != "ok" and params[k]["name"] in msg, msg


# ---------------------------------------------------------------- instruction words

@FAST
@given(data=st.data())
def test_random_instruction_words(lenet, data):
    c, x, y = lenet
    p = c.program
    i = data.draw(st.integers(0, p.n_instr - 1))
    word = data.draw(st.binary(min_size=WORD_BYTES, max_size=WORD_BYTES))
    code = p.code[:i * WORD_BYTES] + word + p.code[(i + 1) * WORD_BYTES:]
    msg = pipeline(rebuild(p, code=code), x, y)
    try:
        decode(word)
    except EdgecError:                 # an undecodable word traps when the program loads
        assert msg.startswith(f"trap at instruction {i} ") and "malformed word" in msg, msg


@pytest.mark.slow
@settings(max_examples=150, deadline=None, derandomize=True)
@given(data=st.data())
def test_field_values_out_of_range(lenet, data):
    """Any encodable value in any field of any instruction: runs, or traps at that word."""
    c, x, y = lenet
    p = c.program
    i = data.draw(st.integers(0, p.n_instr - 1))
    ins, vals = decode(p.code[i * WORD_BYTES:(i + 1) * WORD_BYTES])
    assume(ins.fields)
    for _ in range(data.draw(st.integers(1, 3))):
        f = data.draw(st.sampled_from(ins.fields))
        lo, hi = ((-(1 << (f.bits - 1)), (1 << (f.bits - 1)) - 1) if f.signed
                  else (0, (1 << f.bits) - 1))
        sizes = [TARGET.ibuf, TARGET.wbuf, TARGET.abuf, p.ddr_size]
        vals[f.name] = data.draw(st.integers(lo, hi) | st.sampled_from(
            [v for s in sizes for v in (s - 1, s, s + 1) if lo <= v <= hi] + [lo, hi]))
    word = encode(ins.name, **vals)
    code = p.code[:i * WORD_BYTES] + word + p.code[(i + 1) * WORD_BYTES:]
    msg = pipeline(rebuild(p, code=code), x, y)
    if msg.startswith("trap at instruction "):
        assert int(msg.split()[3]) >= i or "malformed" in msg, msg


def test_missing_end_traps_past_the_last_instruction(lenet):
    c, x, y = lenet
    p = c.program
    msg = pipeline(rebuild(p, code=p.code[:-WORD_BYTES]), x, y)
    assert msg.startswith(f"trap at instruction {p.n_instr - 1} ") and "without END" in msg


def _ld(buf, baddr, ddr, n, esize=None, s3=1):
    return encode("LD", buf=buf, baddr=baddr, ddr=ddr, esize=esize or (4 if buf == ABUF else 1),
                  n0=1, n1=1, n2=1, n3=n, s0=0, s1=0, s2=0, s3=s3)


def _machine(words, data=b"", ddr_size=4096) -> Machine:
    blob = write_program(Program(TARGET.fingerprint, b"".join(words), data, ddr_size))
    return Machine(read_program(blob, "hand.bin"), TARGET)


@FAST
@given(buf=st.sampled_from([IBUF, WBUF, ABUF]), ddr=st.integers(0, 2**32 - 1),
       n=st.integers(1, 64), s3=st.integers(0, 2**24 - 1), store=st.booleans())
def test_dma_outside_memory_traps(buf, ddr, n, s3, store):
    esize = 4 if buf == ABUF else 1
    assume(ddr + esize * (n - 1) * s3 + esize > 4096)
    w = _ld(buf, 0, ddr, n, s3=s3)
    if store:
        w = encode("ST", **decode(w)[1])
    with time_limit(10), pytest.raises(TrapError) as ei:
        _machine([encode("SEED", ddr=0), w, encode("END")]).run()
    assert ei.value.index == 1 and "outside DDR" in str(ei.value)
    assert str(ei.value).startswith(f"trap at instruction 1 ({'ST' if store else 'LD'})")


@FAST
@given(field=st.sampled_from(["aaddr", "baddr", "caddr"]), addr=st.integers(0, 2**20 - 1))
def test_mac_outside_buffers_traps(field, addr):
    f = dict(pattern=0, acc=0, abuf=IBUF, aaddr=0, bbuf=WBUF, baddr=0, caddr=0,
             n=1, ci=16, co=16, xh=4, xw=4, yh=4, yw=4, kh=1, kw=1, sh=1, sw=1, g=1)
    size = {"aaddr": TARGET.ibuf, "baddr": TARGET.wbuf, "caddr": TARGET.abuf}[field]
    tile = {"aaddr": 256, "baddr": 256, "caddr": 256}[field]
    assume(addr + tile > size)
    f[field] = addr
    with pytest.raises(TrapError, match=r"^trap at instruction 0 \(MAC\): .*exceed"):
        _machine([encode("MAC", **f), encode("END")]).run()


# ---------------------------------------------------------------- forged overflow

def test_forged_overflowing_mac_traps_with_its_index():
    """32 accumulating MACs of 4096 products 127*127 fit int32; the 33rd overflows."""
    ci = 4096
    per_mac = ci * 127 * 127
    k = (2**31 - 1) // per_mac + 1                 # the MAC that leaves int32
    assert (k - 1) * per_mac <= 2**31 - 1 < k * per_mac and k == 33
    data = np.full(ci, 127, np.int8).tobytes()
    mac = encode("MAC", pattern=0, acc=1, abuf=IBUF, aaddr=0, bbuf=WBUF, baddr=0, caddr=0,
                 n=1, ci=ci, co=1, xh=1, xw=1, yh=1, yw=1, kh=1, kw=1, sh=1, sw=1, g=1)
    words = [_ld(IBUF, 0, 0, ci), _ld(WBUF, 0, 0, ci)] + [mac] * 40 + [encode("END")]
    blob = write_program(Program(TARGET.fingerprint, b"".join(words), data, 8192))
    m = Machine(read_program(blob, "forged.bin"), TARGET)
    with time_limit(20), pytest.raises(TrapError) as ei:
        m.run()
    t = ei.value
    assert (t.index, t.mnemonic) == (2 + k - 1, "MAC")
    assert str(t).startswith(f"trap at instruction {2 + k - 1} (MAC): accumulator overflow")
    assert int(m.abuf[0]) == (k - 1) * per_mac    # the faulting MAC wrote nothing
    # the same program through `edgec disasm` is readable; `edgec run` reports the bad input
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert cli.main(["disasm", _tmp_write(blob)]) == 0
    assert "MAC" in out.getvalue()


def _tmp_write(blob: bytes) -> str:
    import tempfile
    fd, path = tempfile.mkstemp(suffix=".bin")
    with os.fdopen(fd, "wb") as f:
        f.write(blob)
    return path


# ---------------------------------------------------------------- determinism

def test_emulator_is_deterministic(lenet):
    c, x, y = lenet
    p = read_program(c.blob)
    a, ma = run_step(p, TARGET, x, y)
    b, mb = run_step(p, TARGET, x, y)
    assert sorted(a) == sorted(b)
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert ma.counters == mb.counters


# ---------------------------------------------------------------- edgec run + batch.npz

SENTINEL = b"an earlier out.npz that a failed run must not touch\n"


@pytest.fixture(scope="module")
def rundir(lenet, tmp_path_factory):
    c, x, y = lenet
    d = tmp_path_factory.mktemp("run")
    (d / "prog.bin").write_bytes(c.blob)
    return d


def _run_cli(d: Path, batch: Path, extra=()):
    out = d / "out.npz"
    out.write_bytes(SENTINEL)
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = cli.main(["run", str(d / "prog.bin"), "--input", str(batch), "-o", str(out),
                       *extra])
    return rc, err.getvalue(), out


def _assert_clean_failure(rc, msg, out, d, *words):
    assert rc == 1, msg
    assert msg.startswith("edgec: error: ") and "Traceback" not in msg, msg
    assert msg.count("\n") == 1, msg
    for w in words:
        assert w in msg, msg
    assert out.read_bytes() == SENTINEL
    assert not [f for f in os.listdir(d) if f.startswith(".edgec-")]


def test_run_writes_out_npz(lenet, rundir):
    c, x, y = lenet
    np.savez(rundir / "ok.npz", x=x, y=y)
    rc, msg, out = _run_cli(rundir, rundir / "ok.npz")
    assert rc == 0, msg
    with np.load(out) as z:
        assert z["logits"].shape == (x.shape[0], 10) and np.isfinite(z["loss"])


BAD_BATCHES = {
    "x_shape": (lambda x, y: dict(x=x[:3], y=y), ["shape"]),
    "x_rank": (lambda x, y: dict(x=x.reshape(x.shape[0], -1), y=y), ["shape"]),
    "x_complex": (lambda x, y: dict(x=x.astype(np.complex64), y=y), ["dtype"]),
    "x_str": (lambda x, y: dict(x=x.astype("U3"), y=y), ["dtype"]),
    "x_nan": (lambda x, y: dict(x=np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x)
                                .astype(np.float32), y=y), ["nan", "finite"]),
    "x_inf": (lambda x, y: dict(x=np.full_like(x, np.inf), y=y), ["inf", "finite"]),
    "y_range": (lambda x, y: dict(x=x, y=np.where(np.arange(y.size) == 2, 10, y)),
                ["label 2 is 10", "[0, 10)"]),
    "y_negative": (lambda x, y: dict(x=x, y=-np.ones_like(y)), ["label 0 is -1"]),
    "y_float": (lambda x, y: dict(x=x, y=y.astype(np.float32)), ["integers"]),
    "y_shape": (lambda x, y: dict(x=x, y=y[:2]), ["shape"]),
    "no_x": (lambda x, y: dict(y=y), ["missing array 'x'"]),
    "no_y": (lambda x, y: dict(x=x), ["missing array 'y'"]),
}


@pytest.mark.parametrize("case", sorted(BAD_BATCHES))
def test_bad_batches(lenet, rundir, case):
    c, x, y = lenet
    make, words = BAD_BATCHES[case]
    path = rundir / f"{case}.npz"
    np.savez(path, **make(x, y))
    rc, msg, out = _run_cli(rundir, path)
    _assert_clean_failure(rc, msg, out, rundir)
    assert any(w in msg for w in words), msg


@pytest.mark.parametrize("raw", [b"", b"not a zip file at all", b"PK\x03\x04" + b"\0" * 40])
def test_not_a_zip(rundir, raw):
    path = rundir / "junk.npz"
    path.write_bytes(raw)
    rc, msg, out = _run_cli(rundir, path)
    _assert_clean_failure(rc, msg, out, rundir, "junk.npz")


def test_pickled_batch_is_refused(lenet, rundir):
    c, x, y = lenet
    path = rundir / "pickle.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object), y=y)
    rc, msg, out = _run_cli(rundir, path)
    _assert_clean_failure(rc, msg, out, rundir, "pickle.npz")


def test_missing_input_and_bad_program(lenet, rundir):
    rc, msg, out = _run_cli(rundir, rundir / "nope.npz")
    _assert_clean_failure(rc, msg, out, rundir, "nope.npz")
    c, x, y = lenet
    np.savez(rundir / "ok2.npz", x=x, y=y)
    good = (rundir / "prog.bin").read_bytes()
    try:
        (rundir / "prog.bin").write_bytes(good[:-1])
        rc, msg, out = _run_cli(rundir, rundir / "ok2.npz")
        _assert_clean_failure(rc, msg, out, rundir, "prog.bin", "truncated")
    finally:
        (rundir / "prog.bin").write_bytes(good)


@pytest.mark.parametrize("seed", ["-1", str(2**32), str(2**70)])
def test_bad_seed(lenet, rundir, seed):
    c, x, y = lenet
    np.savez(rundir / "ok3.npz", x=x, y=y)
    rc, msg, out = _run_cli(rundir, rundir / "ok3.npz", ["--seed", seed])
    _assert_clean_failure(rc, msg, out, rundir, "seed")


@settings(max_examples=30, deadline=None, derandomize=True)
@given(data=st.data())
def test_corrupted_npz_bytes(lenet, rundir, data):
    c, x, y = lenet
    path = rundir / "flip.npz"
    np.savez(path, x=x, y=y)
    raw = bytearray(path.read_bytes())
    for b in data.draw(st.lists(st.integers(0, len(raw) * 8 - 1), min_size=1, max_size=6)):
        raw[b // 8] ^= 1 << (b % 8)
    if data.draw(st.booleans()):
        raw = raw[:data.draw(st.integers(0, len(raw)))]
    path.write_bytes(bytes(raw))
    rc, msg, out = _run_cli(rundir, path)
    if rc != 0:
        _assert_clean_failure(rc, msg, out, rundir)
    else:
        with np.load(out) as z:
            assert "logits" in z.files
