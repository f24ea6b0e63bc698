"""Progress of long commands: a live line and stage durations on a terminal, nothing but
the lasting lines when stderr is a pipe, nothing at all with -q."""
from __future__ import annotations

import contextlib
import io
import re
import time
from pathlib import Path

from edgec.compiler.workflows import cli
from edgec.compiler.workflows.progress import Progress, close_all

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_shows_each_stage_with_its_duration():
    term = Terminal()
    log = Progress(stream=term)
    log("first")
    time.sleep(0.3)
    log("second")
    log.line("a result on the way")
    time.sleep(0.05)
    log.close()
    text = ANSI.sub("", term.getvalue())
    first = re.search(r"first\s+(\d+\.\d+) s", text)
    second = re.search(r"second\s+(\d+\.\d+) s", text)
    assert first and second, text
    assert 0.25 <= float(first.group(1)) < 5 and float(second.group(1)) < 0.3 + 5
    assert float(second.group(1)) < float(first.group(1))     # durations, not start times
    assert text.index("first") < text.index("a result on the way") < text.rindex("second")


def test_pipe_gets_only_the_lasting_lines():
    pipe = io.StringIO()
    log = Progress(stream=pipe)
    log("capture")
    log.line("step 1/2  loss 2.3")
    log("codegen")
    log.close()
    assert pipe.getvalue() == "  step 1/2  loss 2.3\n"


def test_quiet_prints_nothing():
    for stream in (io.StringIO(), Terminal()):
        log = Progress(quiet=True, stream=stream)
        log("capture")
        log.line("step 1/2")
        log.close()
        assert stream.getvalue() == ""


def test_close_all_ends_what_a_failed_command_left_open():
    term = Terminal()
    log = Progress(stream=term)
    log("stage that fails")
    close_all()
    assert re.search(r"stage that fails\s+\d+\.\d+ s", ANSI.sub("", term.getvalue()))
    assert log.stage is None


def test_verify_reports_its_stages(monkeypatch):
    from edgec.compiler.driver import compile_model
    from edgec.compiler.workflows.verify import verify
    c = compile_model(str(ROOT / "examples/lenet/model.py"))
    stages = []
    rep = verify(c, sr_seeds=2, log=stages.append)
    assert rep.bit_exact
    assert stages[:2] == ["reference interpreter", "emulator"]
    assert stages[-1].startswith("fidelity criterion (2 ")


def test_cli_in_a_pipe_prints_no_stage_lines(tmp_path):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["compile", str(ROOT / "examples/lenet/model.py"),
                         "-o", str(tmp_path / "p.bin")]) == 0
    assert err.getvalue() == ""


def test_every_command_accepts_q():
    for name in cli.COMMANDS:
        sub = cli.build_parser(name).subcommands[name]
        assert "-q" in sub._option_string_actions and "--quiet" in sub._option_string_actions, name
