"""runtime_emu never imports torch or the compiler (an independent implementation)."""
import ast
import pathlib
import subprocess
import sys

EMU = pathlib.Path(__file__).resolve().parents[2] / "runtime_emu"
ALLOWED_TOP = {"numpy", "edgec", "__future__"} | set(sys.stdlib_module_names)


def test_runtime_emu_imports_are_allowed():
    files = sorted(EMU.glob("*.py"))
    assert len(files) >= 5
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:            # relative: stays inside runtime_emu
                    continue
                names = [node.module or ""]
            for nm in names:
                assert "torch" not in nm and "compiler" not in nm, f"{f.name} imports {nm}"
                assert nm.split(".")[0] in ALLOWED_TOP, f"{f.name} imports {nm}"
                if nm.startswith("edgec"):
                    assert nm == "edgec.isa" or nm.startswith("edgec.isa."), f"{f.name}: {nm}"


def test_runtime_emu_loads_without_torch():
    code = ("import edgec.runtime_emu.machine, edgec.runtime_emu.host, edgec.runtime_emu.ops, sys;"
            "assert 'torch' not in sys.modules, 'torch imported';"
            "assert not any(m.startswith('edgec.compiler') for m in sys.modules), 'compiler'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
