"""CompileOptions: every rule on the options alone is checked once, before anything is
compiled, by the library and the command line alike; unknown options are named."""
from pathlib import Path

import pytest

from edgec.compiler.driver import compile_model
from edgec.compiler.options import CompileOptions
from edgec.isa.errors import EdgecError

ROOT = Path(__file__).resolve().parents[3]
MODEL = str(ROOT / "examples" / "lenet" / "model.py")


@pytest.mark.parametrize("kw, msg", [
    ({"lr": -1.0}, "--lr -1.0: the learning rate must be a number > 0"),
    ({"lr": float("nan")}, "the learning rate must be a number > 0"),
    ({"seed": 2**64}, "--seed 18446744073709551616: the stochastic-rounding seed must be"),
    ({"seed": -1}, "integer in 0..4294967295"),
    ({"momentum": 1.0}, "need 0 <= momentum < 1"),
    ({"weight_decay": -0.1}, "need a weight decay >= 0"),
    ({"search": "random"}, "choose one of greedy, exhaustive"),
    ({"adapt_bn": True, "train": ("fc*",)}, "does not combine with --train"),
    ({"adapt_bn": True, "momentum": 0.9}, "without an update"),
    ({"teacher": {"target": "soft"}}, "unknown teacher target 'soft'"),
    ({"teacher": {"target": "pseudo", "threshold": 1.5}}, "--threshold must be in [0, 1]"),
    ({"teacher": {"target": "kd", "temp": 3.0}}, "power of two"),
    ({"teacher": {"target": "kd", "temp": 2.0}, "classes": (0, 1)}, "--classes cannot"),
])
def test_rules_refuse_before_the_model_is_loaded(kw, msg, monkeypatch):
    with pytest.raises(EdgecError) as e:
        CompileOptions(**kw).check()
    assert msg in str(e.value)
    import edgec.compiler.driver as driver      # compile_model refuses before loading

    def no_load(*a):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(driver, "load_model", no_load)
    with pytest.raises(EdgecError) as e2:
        compile_model(MODEL, None, None, **kw)
    assert str(e2.value) == str(e.value)


def test_defaults_pass_and_fields_replace():
    o = CompileOptions().check()
    assert (o.lr, o.seed, o.search, o.train) == (0.01, 0, "greedy", ())
    o2 = CompileOptions.of(o, lr=0.05, train=["fc*"])
    assert o2.lr == 0.05 and o2.train == ("fc*",) and o.lr == 0.01     # a new object
    with pytest.raises(TypeError, match="unknown compile option.*lrate"):
        CompileOptions.of(o, lrate=0.1)


def test_dump_header_names_lr_seed_and_optimizer_terms():
    assert CompileOptions(lr=0.02, seed=3).dump_header() == {"lr": 0.02, "seed": 3}
    assert CompileOptions(momentum=0.9).dump_header()["momentum"] == 0.9
