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


def _module_graph() -> dict[str, set[str]]:
    """edgec module -> the edgec modules it imports (module-level and deferred alike)."""
    mods = {}
    for top, pkg in (("compiler", "compiler"), ("isa", "isa"), ("runtime_emu", "runtime_emu")):
        for f in (ROOT / top).rglob("*.py"):
            rel = f.relative_to(ROOT).with_suffix("").parts
            name = ".".join(rel[:-1] if rel[-1] == "__init__" else rel)
            mods[name] = f
    graph = {}
    for name, f in mods.items():
        pkg = name.split(".") if f.name == "__init__.py" else name.split(".")[:-1]
        out = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(pkg[:len(pkg) - node.level + 1])
                    tgt = f"{base}.{node.module}" if node.module else base
                else:
                    tgt = (node.module or "").removeprefix("edgec.")
                cands = [f"{tgt}.{a.name}" for a in node.names] + [tgt]
            elif isinstance(node, ast.Import):
                cands = [a.name.removeprefix("edgec.") for a in node.names]
            else:
                continue
            for t in cands:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != name and not name.startswith(t + "."):
                    out.add(t)
        graph[name] = out
    return graph


def test_no_import_cycle():
    graph = _module_graph()
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for t in sorted(graph[m]):
            assert state.get(t) != 1, "import cycle: " + " -> ".join(path + [m, t])
            if t not in state:
                visit(t, path + [m])
        state[m] = 2
    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_nothing_below_the_workflows_imports_them():
    for m, deps in _module_graph().items():
        if not m.startswith("compiler.workflows"):
            assert not [d for d in deps if d.startswith("compiler.workflows")], m


def test_no_function_longer_than_150_lines():
    long = []
    for top in ("compiler", "isa", "runtime_emu"):
        for f in (ROOT / top).rglob("*.py"):
            for n in ast.walk(ast.parse(f.read_text())):
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                        and n.end_lineno - n.lineno + 1 > 150:
                    long.append(f"{f.relative_to(ROOT)}:{n.lineno} {n.name}")
    assert not long, long
