"""BatchNorm per domain: a teacher-target program whose student runs with BatchNorm statistics
adapted to the user's data while the teacher keeps its own (the pretrained ones by default).
Checked against the float models they stand for (PyTorch, not edgec), bit-exact emulator vs
reference, and the `edgec finetune --adapt-bn --labels pseudo` workflow end to end."""
from pathlib import Path

import numpy as np
import pytest
import torch

from edgec.compiler.workflows.cli import main
from edgec.compiler.driver import bn_statistics, compile_model
from edgec.compiler.frontend.load import load_model
from edgec.compiler.workflows.verify import verify
from edgec.runtime_emu.host import Session, read_real

ROOT = Path(__file__).resolve().parents[3]
MODEL = str(ROOT / "examples" / "personalize" / "model.py")
MASK = str(ROOT / "examples" / "personalize" / "user.mask")


def _shifted(model) -> dict:
    """Statistics clearly unlike the pretrained ones (a stand-in for an adapted domain)."""
    g = torch.Generator().manual_seed(0)
    return {m: (mean + torch.randn(mean.shape, generator=g) * 0.5 * var.sqrt(),
                var * (0.3 + 2 * torch.rand(var.shape, generator=g)))
            for m, (mean, var) in bn_statistics(model).items()}


@pytest.fixture(scope="module")
def domain():
    model, _ = load_model(MODEL)
    stats = _shifted(model)
    c = compile_model(MODEL, MASK, teacher={"target": "pseudo", "threshold": 0.5},
                      bn_stats=stats)
    return model, stats, c


def _cos(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_teacher_and_student_hold_their_own_constants(domain):
    model, stats, c = domain
    m = Session(c.program, c.target).machine
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.BatchNorm2d):
            continue
        pre = 1 / torch.sqrt(mod.running_var.double() + mod.eps)
        new = 1 / torch.sqrt(stats[name][1].double() + mod.eps)
        t = read_real(m, f"param:teacher:{name}:scale").ravel()
        s = read_real(m, f"param:{name}:scale").ravel()
        step = np.abs(t).max() / 64                      # int8: well inside a few steps
        assert np.abs(t - pre.numpy()).max() <= step, name
        kept = np.flatnonzero(s)                         # the student's kept channels
        assert np.abs(s[kept] - new.numpy()[kept]).max() <= np.abs(s).max() / 64, name
        assert np.abs(pre.numpy() - new.numpy()).max() > 4 * step     # the test can fail
    assert c.program.meta["teacher"]["own_bn"] is True
    assert c.model is not model             # the student model carries the adapted statistics
    sd = c.model.state_dict()
    for name, (mean, var) in stats.items():
        torch.testing.assert_close(sd[f"{name}.running_mean"], mean.float())


def test_teacher_logits_are_the_pretrained_models(domain):
    model, stats, c = domain
    rng = np.random.default_rng(1)
    x = rng.random(tuple(c.example_input.shape), dtype=np.float32)
    sess = Session(c.program, c.target)
    sess.step(x, np.zeros(len(x), np.int64))
    got = read_real(sess.machine, c.program.meta["teacher_logits"])
    with torch.no_grad():
        want = model.eval()(torch.from_numpy(x)).numpy()        # pretrained statistics
        other = c.model.eval()(torch.from_numpy(x)).numpy()     # the student's statistics
    assert _cos(got, want) > 0.98 and _cos(got, want) > _cos(got, other) + 0.05, (
        _cos(got, want), _cos(got, other))


@pytest.mark.slow
def test_domain_bn_program_bit_exact_and_faithful(domain):
    rep = verify(domain[2])
    assert rep.bit_exact, rep.mismatches[:3]
    assert any(s.startswith("param:teacher:bn") for s in rep.checked)
    assert rep.fidelity_ok, rep.devfwd


def test_without_bn_stats_the_teacher_shares_constants():
    c = compile_model(MODEL, MASK, teacher={"target": "kd", "temp": 2.0})
    assert not any(p.startswith("teacher:") and ":scale" in p for p in c.graph.params)
    assert "own_bn" not in c.program.meta["teacher"]


def test_cli_finetune_adapt_bn_with_teacher(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.random((48, 1, 8, 8), dtype=np.float32) * 0.5 + 0.25    # a shifted domain
    data, out = tmp_path / "u.npz", tmp_path / "t.pt"
    np.savez(data, x=x, y=rng.integers(0, 10, 48))
    assert main(["finetune", MODEL, "--mask", MASK, "--labels", "pseudo", "--adapt-bn",
                 "--adapt-steps", "3", "--data", str(data), "--steps", "2", "-q",
                 "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3 BatchNorm adaptation runs of the student" in text and "BN-adapted" in text
    sd = torch.load(out)
    model, _ = load_model(MODEL)
    pre = model.state_dict()
    assert not torch.equal(sd["bn1.running_mean"], pre["bn1.running_mean"])    # adapted
    for bad, msg in ((["--adapt-steps", "2"], "--adapt-steps and --teacher-bn apply"),
                     (["--labels", "pseudo", "--teacher-bn", "adapted"], "apply to --adapt-bn")):
        o = tmp_path / "bad.pt"
        assert main(["finetune", MODEL, "--data", str(data), "--steps", "1", "-q",
                     "-o", str(o), *bad]) == 1
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, err
        assert not o.exists()


def test_float_autograd_uses_the_teachers_statistics(domain):
    """The float loss (verify's information cosine) takes its targets from the teacher with
    the teacher's statistics, not from the student model."""
    from edgec.compiler.workflows.floatmodel import float_loss
    model, _, c = domain
    x = torch.from_numpy(np.random.default_rng(2).random(tuple(c.example_input.shape),
                                                           dtype=np.float32))
    z = torch.randn(x.shape[0], 10, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = torch.nn.functional.cross_entropy(z, model.eval()(x).argmax(1),
                                                 reduction="none")
        conf = torch.softmax(model(x), 1).max(1).values >= 0.5
    torch.testing.assert_close(float_loss(c, z, x, None), (want * conf).mean())
    with torch.no_grad():                                   # the student's would differ
        other = c.model.eval()(x)
    alt = torch.nn.functional.cross_entropy(z, other.argmax(1), reduction="none")
    alt_conf = torch.softmax(other, 1).max(1).values >= 0.5
    assert abs(float((alt * alt_conf).mean() - (want * conf).mean())) > 1e-3
