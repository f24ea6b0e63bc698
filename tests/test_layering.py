"""The dependency direction of DESIGN.md section 2, checked on the source and at run time."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(folder):
    for f in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                yield f, [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mod = ("." * node.level) + (node.module or "")
                yield f, [mod]


def test_runtime_emu_imports_neither_torch_nor_compiler():
    for f, mods in _imports("runtime_emu"):
        for m in mods:
            assert not m.startswith(("torch", "edgec.compiler", "..compiler", "lark")), (f, m)


def test_isa_imports_only_numpy_and_stdlib():
    for f, mods in _imports("isa"):
        for m in mods:
            assert not m.startswith(("torch", "lark", "edgec.compiler", "edgec.runtime_emu",
                                     "..")), (f, m)


def test_loading_the_emulator_loads_no_torch():
    code = ("import sys, edgec.runtime_emu.machine, edgec.runtime_emu.host; "
            "bad = [m for m in sys.modules if m.startswith(('torch', 'edgec.compiler'))]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
