"""The op registry (compiler/ir/ops.py) against the per-stage rule tables: every stage has
a rule for exactly the ops the registry says it applies to (docs/architecture.md,
"Adding an op")."""
from __future__ import annotations

import pytest

from edgec.compiler import reference
from edgec.compiler.backend import codegen, onnx_out, tiling
from edgec.compiler.ir import float_interp, ops
from edgec.compiler.ir.graph import OPS
from edgec.compiler.ir.loops import NEST_DIMS
from edgec.compiler.passes import mask, quantize, shapes


def stage_tables() -> dict[str, dict]:
    """stage -> its {op name: rule} table (looked up now, so a monkeypatch shows)."""
    return {
        "shape": shapes.SHAPE_RULES,
        "float": float_interp.FLOAT_RULES,
        "reference": reference.REFERENCE_RULES,
        "quantize": quantize.QUANTIZE_RULES,
        "mask": mask.MASK_RULES,
        "tiling": tiling.TILE_RULES,
        "codegen": codegen.LOWERING,
        "onnx": onnx_out.ONNX_RULES,
    }


def missing_rules() -> list[str]:
    """'stage: op' for every op the registry applies a stage to that lacks a rule, and
    'stage: op (not applicable)' for a rule of an op the stage does not apply to."""
    problems = []
    for stage, table in stage_tables().items():
        want = ops.applies(stage)
        problems += [f"{stage}: {op}" for op in sorted(want - set(table))]
        problems += [f"{stage}: {op} (not applicable)" for op in sorted(set(table) - want)]
        problems += [f"{stage}: {op} (not callable)" for op, r in table.items()
                     if not callable(r)]
    return problems


def test_every_stage_has_a_rule_for_every_op_it_applies_to():
    assert missing_rules() == []


def test_the_stage_list_names_every_table():
    assert set(stage_tables()) == set(ops.STAGES)
    for stage, where in ops.STAGES.items():
        path, table = where.split()
        module = path[len("compiler/"):-len(".py")].replace("/", ".")
        mod = __import__(f"edgec.compiler.{module}", fromlist=[table])
        assert getattr(mod, table) is stage_tables()[stage], stage


def test_removing_one_rule_is_caught(monkeypatch):
    table = dict(codegen.LOWERING)
    del table["maxpool_bwd"]
    monkeypatch.setattr(codegen, "LOWERING", table)
    assert missing_rules() == ["codegen: maxpool_bwd"]


@pytest.mark.parametrize("stage", sorted(ops.STAGES))
def test_removing_any_rule_of_a_stage_is_caught(monkeypatch, stage):
    table = stage_tables()[stage]
    victim = sorted(table)[0]
    monkeypatch.delitem(table, victim)
    assert f"{stage}: {victim}" in missing_rules()


def test_graph_and_loop_views_follow_the_registry():
    assert list(OPS) == list(ops.REGISTRY)
    for name, d in ops.REGISTRY.items():
        assert OPS[name] == (d.inputs, d.outputs, d.attrs)
        assert NEST_DIMS.get(name) == d.nest
    assert set(NEST_DIMS) == ops.MATERIALISED


def test_groups():
    assert ops.MAC_OPS == ops.MAC_FORWARD | ops.MAC_EB | ops.MAC_WG
    assert ops.MAC_FORWARD == {"conv", "linear"}
    assert ops.FORWARD == {"conv", "linear", "relu", "hardtanh", "add", "maxpool", "reshape",
                           "wview", "concat", "slice", "chmul"}
    assert ops.CHANNEL_OPS == {"concat", "slice"} and ops.CHANNEL_OPS <= ops.SAME_FORMAT
    assert ops.GATE_OPS == {"chmul", "chmul_ds"} and not ops.GATE_OPS & ops.ELTWISE
    assert ops.applies("onnx") == ops.FORWARD
    assert ops.GRADIENTS == {"conv_wg", "linear_wg", "bias_grad"}
    assert ops.MATERIALISED == set(ops.REGISTRY) - {"reshape", "wview"}
    for d in ops.REGISTRY.values():
        assert (d.mac is not None) == (d.name in ops.MAC_OPS)
        assert d.doc and d.doc[-1] != " "


def test_unknown_op_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown op 'conv3d'"):
        ops.op("conv3d")


def test_op_registry_imports_nothing_above_the_ir():
    import ast
    import inspect
    tree = ast.parse(inspect.getsource(ops))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"__future__", "dataclasses"}


def registry_table() -> list[str]:
    """The op table of docs/ir.md, as the registry gives it."""
    def dims(d):
        if d.nest is None:
            return "(not materialised)"
        par, red = d.nest
        return ", ".join(par) + (" \\| " + ", ".join(red) if red else "")
    rows = ["| op | phase | family | MAC | inputs | loop dims (parallel \\| reduction) |",
            "|---|---|---|---|---|---|"]
    for d in ops.REGISTRY.values():
        lo, hi = d.inputs
        rows.append(f"| `{d.name}` | {d.phase} | {d.family} | {d.mac or ''} | "
                    f"{lo if lo == hi else f'{lo}-{hi}'} | {dims(d)} |")
    return rows


def test_ir_md_op_table_is_the_registry():
    from pathlib import Path
    text = Path(__file__).resolve().parents[3].joinpath("docs", "ir.md").read_text()
    assert "\n".join(registry_table()) in text, "\n" + "\n".join(registry_table())
