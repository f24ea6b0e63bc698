"""Canonical text forms of the graph IR and the loop IR (grammars: graph.lark, loop.lark).

``print_graph``/``print_loop`` write one canonical text; ``parse_ir`` reads it back
(lark, LALR) into the same dataclasses, so ``print(parse(text)) == text`` and the parsed
IR is structurally equal to the printed one (``ir_diff`` says where it is not).  The
initial integer weights (``graph.meta["init"]``) are not printed: the header's
``source`` line names model.py, the mask, target, lr and seed, from which
``compiler/resume.py`` re-derives them.  See docs/ir.md for the format.
"""
from __future__ import annotations

import functools
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import lark

from edgec.isa.errors import EdgecError

from ..grammars import lalr_parser

from .graph import OPS, PARAM_KINDS, Graph, Node, Param, Value
from .loops import LoopNest

STAGES = ("capture", "prune", "mask", "quantize", "update", "tile")
SOURCE_KEYS = ("model", "mask", "target", "lr", "seed")
OPTIONAL_SOURCE_KEYS = ("momentum", "weight_decay")    # printed only when given
_NAME = re.compile(r"[A-Za-z_]([A-Za-z0-9_.:]*[A-Za-z0-9_])?\Z")
_KEYWORDS = {"true", "false", "none", "of", "frozen", "tile", "unit", "at"}
_DTYPES = ("f32", "i8", "i16", "i32")


@dataclass
class IRFile:
    kind: str                       # "graph" | "loop"
    stage: str                      # capture | mask | quantize | update | tile
    source: dict[str, Any]          # model, mask, target, lr, seed
    graph: Graph
    nests: list[LoopNest] | None = None
    lines: dict = field(default_factory=dict)   # ("node", i) / ("nest", k) -> line


# ---------------------------------------------------------------- printing

def _q(s: str) -> str:
    return json.dumps(s)


def _name(s: str) -> str:
    return s if _NAME.match(s) and s not in _KEYWORDS else _q(s)


def _ref(v: str) -> str:
    return "%" + (v if _NAME.match(v) else _q(v))


def _lit(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int) or (hasattr(v, "dtype") and getattr(v, "ndim", 1) == 0
                              and "int" in str(v.dtype)):
        return str(int(v))
    if isinstance(v, float) or (hasattr(v, "dtype") and getattr(v, "ndim", 1) == 0):
        f = float(v)
        if math.isnan(f):
            return "nan"
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        return repr(f)
    if isinstance(v, str):
        return _q(v)
    if isinstance(v, tuple):
        return "(" + ", ".join(_lit(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    if isinstance(v, list):
        return "[" + ", ".join(_items(v)) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_name(str(k))}={_lit(x)}" for k, x in v.items()) + "}"
    raise EdgecError(f"IR text: cannot print a value of type {type(v).__name__}")


def _items(v: list) -> list[str]:
    """List items; runs of >= 3 consecutive ints print as a..b."""
    out, i = [], 0
    while i < len(v):
        x = v[i]
        if isinstance(x, int) and not isinstance(x, bool):
            j = i
            while (j + 1 < len(v) and isinstance(v[j + 1], int)
                   and not isinstance(v[j + 1], bool) and v[j + 1] == v[j] + 1):
                j += 1
            if j - i >= 2:
                out.append(f"{x}..{v[j]}")
                i = j + 1
                continue
        out.append(_lit(x))
        i += 1
    return out


def _type(v: Value) -> str:
    scale = f"<2^{v.exp}>" if v.exp is not None else ""
    return f"{v.dtype}{scale}[{','.join(str(s) for s in v.shape)}]"


def _header(kind: str, stage: str, source: dict) -> list[str]:
    src = " ".join(f"{k}={_lit(source.get(k))}" for k in SOURCE_KEYS
                   + tuple(k for k in OPTIONAL_SOURCE_KEYS if source.get(k)))
    what = ("graph IR: values with dtype<2^exp>[shape] (real = q * 2^exp), nodes "
            "`N: results = op operands {attrs} @layer at \"file:line\"`"
            if kind == "graph" else
            "loop IR: the graph, then `nest NODE op @layer {dim: extent tile T [unit U], "
            "...}` with loops outermost first (tile sizes and order may be edited)")
    return [f"# edgec {what}", f"edgec {kind} v1 stage {stage}", f"source {src}"]


def _graph_lines(g: Graph) -> list[str]:
    produced = {o for n in g.nodes for o in n.outputs}
    lines = ["input " + ", ".join(_ref(v) for v in g.inputs) if g.inputs else "input"]
    for v in g.values.values():
        if v.name not in produced:
            lines.append(f"value {_ref(v.name)}: {_type(v)}")
    for p in g.params.values():
        lines.append(f"param {_name(p.name)} = {_ref(p.value)} "
                     f"[{','.join(str(s) for s in p.shape)}] {_name(p.kind)} of "
                     f"{_name(p.module)}" + ("" if p.trainable else " frozen"))
    for k, c in g.consts.items():
        lines.append(f"const {_name(k)} = {_lit(list(c))}")
    for k, v in g.meta.items():
        if k != "init":
            lines.append(f"meta {_name(k)} = {_lit(v)}")
    for i, n in enumerate(g.nodes):
        res = ", ".join(f"{_ref(o)}: {_type(g.values[o])}" for o in n.outputs)
        s = f"{i}: {res} = {_name(n.op)}"
        if n.inputs:
            s += " " + ", ".join(_ref(v) for v in n.inputs)
        if n.attrs:
            s += " " + _lit(n.attrs)
        if n.layer is not None:
            s += f" @{_name(n.layer)}"
        if n.loc is not None:
            s += f" at {_q(n.loc)}"
        lines.append(s)
    for k, v in g.outputs.items():
        lines.append(f"output {_name(k)} = {_ref(v)}")
    return lines


def print_graph(g: Graph, stage: str, source: dict) -> str:
    return "\n".join(_header("graph", stage, source) + _graph_lines(g)) + "\n"


def _nest_line(n: LoopNest) -> str:
    parts = []
    for d in n.order:
        s = f"{_name(d)}: {n.dims[d]} tile {n.tiles[d]}"
        if d in n.unit:
            s += f" unit {n.unit[d]}"
        parts.append(s)
    lay = f" @{_name(n.layer)}" if n.layer is not None else ""
    return f"nest {n.node} {_name(n.op)}{lay} {{{', '.join(parts)}}}"


def print_loop(g: Graph, nests: list[LoopNest], source: dict) -> str:
    lines = _header("loop", "tile", source) + _graph_lines(g)
    lines += [_nest_line(n) for n in nests]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- parsing

@functools.lru_cache(maxsize=None)
def _parser(kind: str) -> lark.Lark:
    files = ("graph.lark", "loop.lark") if kind == "loop" else ("graph.lark",)
    return lalr_parser(__file__, *files, placeholders=True)


_TOKEN_NAMES = {"VALREF": "a value (%name)", "NAME": "a name", "INT": "an integer",
                "STRING": "a quoted string", "FLOAT": "a number", "SCALE": "a scale <2^E>",
                "RANGE": "a range A..B", "FROZEN": "'frozen'", "$END": "end of file"}


def _expected(names) -> str:
    out = []
    for t in sorted(names):
        if t in _TOKEN_NAMES:
            out.append(_TOKEN_NAMES[t])
        else:
            try:
                out.append(repr(_parser("loop").get_terminal(t).pattern.value))
            except Exception:   # noqa: BLE001 - fall back on the terminal name
                out.append(t)
    return ", ".join(dict.fromkeys(out))


class _Err(Exception):
    def __init__(self, meta_or_tok, msg):
        super().__init__(msg)
        self.line = getattr(meta_or_tok, "line", None)
        self.col = getattr(meta_or_tok, "column", None)
        self.msg = msg


def _unq(tok) -> str:
    s = str(tok)
    return json.loads(s) if s.startswith('"') else s


def _refname(tok) -> str:
    return _unq(str(tok)[1:])


@dataclass
class _Range:
    a: int
    b: int


class _Build(lark.Transformer):
    def name(self, c):
        return _unq(c[0])

    def int(self, c):
        return int(c[0])

    def float(self, c):
        return float(str(c[0]))

    def string(self, c):
        return json.loads(str(c[0]))

    def true(self, _c):
        return True

    def false(self, _c):
        return False

    def none(self, _c):
        return None

    def tuple(self, c):
        return tuple(c)

    def range(self, c):
        x = c[0]
        m = re.match(r"(-?\d+)\.\.(-?\d+)$", str(x))
        a, b = int(m.group(1)), int(m.group(2))
        if b < a:
            raise _Err(x, f"empty range {x} (write A..B with A <= B)")
        return _Range(a, b)

    def list(self, c):
        out = []
        for x in c:
            if isinstance(x, _Range):
                out.extend(range(x.a, x.b + 1))
            else:
                out.append(x)
        return out

    def dict(self, c):
        d = {}
        for k, v in c:
            d[k] = v
        return d

    def kv(self, c):
        return (c[0], c[1])

    attrs = dict

    def shape(self, c):
        return tuple(int(x) for x in c)

    @lark.v_args(meta=True)
    def type(self, meta, c):
        dt, scale, shape = c
        if dt not in _DTYPES:
            raise _Err(meta, f"unknown dtype {dt!r} (expected one of {', '.join(_DTYPES)})")
        exp = int(str(scale)[3:-1]) if scale is not None else None
        return (dt, exp, shape)


def parse_ir(text: str, filename: str = "<ir>") -> IRFile:
    """Parse a graph (.ir) or loop (.loop) dump; errors are EdgecError FILE:LINE:COL."""
    m = re.search(r"^\s*edgec\s+(graph|loop)\b", text, re.M)
    kind = m.group(1) if m else "graph"
    try:
        tree = _parser(kind).parse(text)
    except lark.exceptions.UnexpectedToken as e:
        got = "end of file" if e.token.type == "$END" else repr(str(e.token))
        raise EdgecError(f"{filename}:{e.line}:{e.column}: unexpected {got}; expected "
                         f"{_expected(e.accepts or e.expected)}") from None
    except lark.exceptions.UnexpectedCharacters as e:
        raise EdgecError(f"{filename}:{e.line}:{e.column}: unexpected character "
                         f"{text[e.pos_in_stream]!r}; expected "
                         f"{_expected(e.allowed)}") from None
    except lark.exceptions.UnexpectedEOF as e:
        line = text.count("\n") + 1
        col = len(text) - (text.rfind("\n") + 1) + 1
        raise EdgecError(f"{filename}:{line}:{col}: unexpected end of file; expected "
                         f"{_expected(e.expected)}") from None
    try:
        return _build(tree, kind)
    except _Err as e:
        where = f"{filename}:{e.line}:{e.col}" if e.line else filename
        raise EdgecError(f"{where}: {e.msg}") from None
    except lark.exceptions.VisitError as e:
        o = e.orig_exc
        if isinstance(o, _Err):
            where = f"{filename}:{o.line}:{o.col}" if o.line else filename
            raise EdgecError(f"{where}: {o.msg}") from None
        m = getattr(e.obj, "meta", None)
        where = f"{filename}:{m.line}:{m.column}" if m is not None and not m.empty else filename
        raise EdgecError(f"{where}: bad {e.rule}: {type(o).__name__}: {o}") from None


def _build(tree, kind: str) -> IRFile:
    tree = _Build().transform(tree)
    stage, source_t, *stmts = tree.children
    src = {}
    for k, v in source_t.children:
        if k not in SOURCE_KEYS + OPTIONAL_SOURCE_KEYS:
            raise _Err(source_t.meta, f"unknown source key {k!r} (expected "
                       f"{', '.join(SOURCE_KEYS + OPTIONAL_SOURCE_KEYS)})")
        src[k] = v
    if stage not in STAGES or (kind == "loop") != (stage == "tile"):
        raise _Err(tree.meta, f"stage {stage!r} is not valid for a {kind} file (expected "
                   f"{'tile' if kind == 'loop' else ', '.join(STAGES[:-1])})")
    g = Graph()
    nests: list[LoopNest] = []
    lines: dict = {}

    def add_value(tok_meta, name, t):
        if name in g.values:
            raise _Err(tok_meta, f"value %{name} declared twice")
        g.values[name] = Value(name, t[2], t[0], t[1])

    for s in stmts:
        d, c, meta = s.data, s.children, s.meta
        if d == "input_stmt":
            if g.inputs:
                raise _Err(meta, "a second 'input' statement")
            g.inputs = [_refname(x) for x in c]
            lines[("input",)] = (meta.line, meta.column)
        elif d == "value_stmt":
            add_value(c[0], _refname(c[0]), c[1])
        elif d == "param_stmt":
            name, ref, shape, pkind, module, frozen = c
            if pkind not in PARAM_KINDS:
                raise _Err(meta, f"parameter kind {pkind!r}: expected one of "
                                 f"{', '.join(PARAM_KINDS)}")
            if name in g.params:
                raise _Err(meta, f"parameter {name!r} declared twice")
            g.params[name] = Param(name, _refname(ref), shape, module, pkind, frozen is None)
            lines[("param", name)] = (meta.line, meta.column)
        elif d == "const_stmt":
            if not isinstance(c[1], list) or not all(isinstance(x, int) for x in c[1]):
                raise _Err(meta, f"const {c[0]!r}: expected a list of integers")
            g.consts[c[0]] = c[1]
        elif d == "output_stmt":
            g.outputs[c[0]] = _refname(c[1])
            lines[("output", c[0])] = (meta.line, meta.column)
        elif d == "meta_stmt":
            if c[0] == "init":
                raise _Err(meta, "meta init is not part of the text form (it is re-derived "
                           "from the source)")
            g.meta[c[0]] = c[1]
        elif d == "node":
            idx = int(c[0])
            if idx != len(g.nodes):
                raise _Err(c[0], f"node index {idx}: expected {len(g.nodes)} (nodes are "
                           "numbered in order from 0)")
            results = [x for x in c[1:] if isinstance(x, lark.Tree) and x.data == "result"]
            rest = c[1 + len(results):]
            op, rest = rest[0], rest[1:]
            if op not in OPS:
                raise _Err(meta, f"unknown op {op!r} (expected one of {', '.join(OPS)})")
            ins, attrs, layer, loc = [], {}, None, None
            for x in rest:
                if x is None:
                    continue
                if isinstance(x, lark.Token) and x.type == "VALREF":
                    ins.append(_refname(x))
                elif isinstance(x, dict):
                    attrs = x
                elif isinstance(x, lark.Tree) and x.data == "layer":
                    layer = x.children[0]
                elif isinstance(x, lark.Tree) and x.data == "loc":
                    loc = json.loads(str(x.children[0]))
            outs = []
            for r in results:
                add_value(r.children[0], _refname(r.children[0]), r.children[1])
                outs.append(_refname(r.children[0]))
            lines[("node", idx)] = (meta.line, meta.column)
            g.nodes.append(Node(op, ins, outs, attrs, layer, loc))
        elif d == "nest":
            node, op, layer, *dims = c
            dd, tt, uu, order = {}, {}, {}, []
            for ld in dims:
                dn, ext, tile, unit = ld.children
                if dn in dd:
                    raise _Err(ld.meta, f"nest {node}: dim {dn!r} listed twice")
                dd[dn], tt[dn] = int(ext), int(tile)
                if unit is not None:
                    uu[dn] = int(unit)
                order.append(dn)
            lay = layer.children[0] if layer is not None else None
            lines[("nest", len(nests))] = (meta.line, meta.column)
            nests.append(LoopNest(int(node), op, lay, dd, tt, tuple(order), uu))
        else:   # pragma: no cover - grammar and builder out of sync
            raise _Err(meta, f"unexpected statement {d}")
    return IRFile(kind, stage, src, g, nests if kind == "loop" else None, lines)


# ---------------------------------------------------------------- checks

def located(f: IRFile, filename: str, e: Exception) -> EdgecError:
    """A verifier's (or codegen's) "node I (...): ..." error, located at node I's line in the file."""
    m = re.match(r"node (\d+)", str(e))
    ln = f.lines.get(("node", int(m.group(1)))) if m else None
    return EdgecError(f"{filename}:{ln[0]}:{ln[1]}: {e}" if ln else f"{filename}: {e}")


def check_ir(f: IRFile, filename: str = "<ir>") -> None:
    """Semantic checks of a parsed file: graph.verify, params/outputs refer to values,
    nests refer to matching nodes and pass LoopNest.verify.  Errors are located."""
    g = f.graph

    def at(key) -> str:
        ln = f.lines.get(key)
        return f"{filename}:{ln[0]}:{ln[1]}" if ln else filename

    for p in g.params.values():
        if p.value not in g.values:
            raise EdgecError(f"{at(('param', p.name))}: parameter {p.name!r}: value %{p.value} is not "
                             "declared")
    for k, v in g.outputs.items():
        if v not in g.values:
            raise EdgecError(f"{at(('output', k))}: output {k!r}: value %{v} is not declared")
    for v in g.inputs:
        if v not in g.values:
            raise EdgecError(f"{at(('input',))}: input %{v} is not declared (add a value line)")
    try:
        g.verify()
    except ValueError as e:
        raise located(f, filename, e) from None
    if f.nests is not None:
        for k, n in enumerate(f.nests):
            where = at(("nest", k))
            if not 0 <= n.node < len(g.nodes):
                raise EdgecError(f"{where}: nest refers to node {n.node}, which does not "
                                 f"exist (0..{len(g.nodes) - 1})")
            gn = g.nodes[n.node]
            if gn.op != n.op:
                raise EdgecError(f"{where}: nest {n.node} is a {n.op!r} nest but node "
                                 f"{n.node} is {gn.op!r}")
            try:
                n.verify()
            except (ValueError, KeyError) as e:
                raise EdgecError(f"{where}: {e}") from None


def ir_diff(a: Graph, b: Graph, na=None, nb=None) -> str | None:
    """First structural difference between two IRs (None if equal).  Compares values
    (shape/dtype/exp), nodes (op/inputs/outputs/attrs/layer/loc), params, inputs,
    outputs, consts, meta (without init) and loop nests."""
    def norm(x):
        if isinstance(x, (list, tuple)):
            return type(x)(norm(y) for y in x)
        if isinstance(x, dict):
            return {k: norm(v) for k, v in x.items()}
        if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
            return x.item()
        return x
    if a.values != b.values:
        for k in a.values.keys() | b.values.keys():
            if a.values.get(k) != b.values.get(k):
                return f"value {k}: {a.values.get(k)} != {b.values.get(k)}"
    if len(a.nodes) != len(b.nodes):
        return f"{len(a.nodes)} nodes != {len(b.nodes)} nodes"
    for i, (x, y) in enumerate(zip(a.nodes, b.nodes)):
        if (x.op, x.inputs, x.outputs, norm(x.attrs), x.layer, x.loc) != \
                (y.op, y.inputs, y.outputs, norm(y.attrs), y.layer, y.loc):
            return f"node {i}: {x} != {y}"
    for what in ("inputs", "params", "outputs", "consts"):
        if getattr(a, what) != getattr(b, what):
            return f"{what} differ"
    ma = {k: norm(v) for k, v in a.meta.items() if k != "init"}
    mb = {k: norm(v) for k, v in b.meta.items() if k != "init"}
    if ma != mb:
        return f"meta differs: {ma} != {mb}"
    if (na is None) != (nb is None) or (na is not None and na != nb):
        return "loop nests differ"
    return None


def read_ir(path: str) -> IRFile:
    """Read, parse and check a dump; print(parse(text)) must give the text back."""
    from edgec.isa.filekind import IR, check_kind
    if os.path.isfile(path):
        check_kind(path, "an edgec IR dump (a .ir / .loop file of compile --dump-ir)", (IR,))
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as e:
        raise EdgecError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise EdgecError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); expected "
                         "an edgec IR dump") from None
    f = parse_ir(text, path)
    check_ir(f, path)
    return f


def format_ir(f: IRFile) -> str:
    if f.kind == "loop":
        return print_loop(f.graph, f.nests, f.source)
    return print_graph(f.graph, f.stage, f.source)


class Dumper:
    """Writes one file per pipeline stage into a directory, each verified on write
    (parsed back and compared structurally and textually)."""

    FILES = {"capture": "00-capture.ir", "prune": "01-prune.ir", "mask": "02-mask.ir",
             "quantize": "03-quantize.ir", "update": "04-update.ir", "tile": "05-tile.loop"}

    def __init__(self, outdir: str, source: dict):
        self.outdir, self.source = outdir, dict(source)
        self.written: list[str] = []
        try:
            os.makedirs(outdir, exist_ok=True)
        except OSError as e:
            raise EdgecError(f"--dump-ir {outdir}: cannot create directory "
                             f"({e.strerror})") from None

    def __call__(self, stage: str, g: Graph, nests: list[LoopNest] | None = None) -> None:
        text = print_loop(g, nests, self.source) if stage == "tile" else \
            print_graph(g, stage, self.source)
        path = os.path.join(self.outdir, self.FILES[stage])
        f = parse_ir(text, path)
        check_ir(f, path)
        diff = ir_diff(g, f.graph, nests, f.nests)
        if diff is None and format_ir(f) != text:
            diff = "re-printed text differs"
        if diff:
            raise EdgecError(f"internal error: IR dump {path} does not read back: {diff}")
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
        self.written.append(path)
