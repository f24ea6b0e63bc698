"""The op registry: one ``OpDef`` per edgec graph op, and the named groups derived from it.

Everything the compiler knows about an op *as data* lives here: its arity and required
attributes (checked by ``Graph.verify``), its family and phase, the MAC pattern it runs on
(FP / EB / WG), how the mask pass carries channels through it, its loop-nest dims
(``loops.NEST_DIMS`` is a view of them), and which compiler stages must have a rule for it
(``stages``; tests/test_op_registry.py fails when one is missing).

What an op *does* at each stage is a rule function in that stage's own module, held in a
table ``{op name: rule}`` (docs/architecture.md, "Adding an op", lists them).  This module
imports nothing from the passes, the backend or the frontend, and holds no callables.
"""
from __future__ import annotations

from dataclasses import dataclass

#: the compiler stages that keep one rule per op (stage -> where its table lives)
STAGES: dict[str, str] = {
    "shape": "compiler/passes/shapes.py SHAPE_RULES",
    "float": "compiler/ir/float_interp.py FLOAT_RULES",
    "reference": "compiler/reference.py REFERENCE_RULES",
    "quantize": "compiler/passes/quantize.py QUANTIZE_RULES",
    "mask": "compiler/passes/mask.py MASK_RULES",
    "tiling": "compiler/backend/tiling.py TILE_RULES",
    "codegen": "compiler/backend/codegen.py LOWERING",
    "onnx": "compiler/backend/onnx_out.py ONNX_RULES",
}

#: families: mac (a MAC pattern), act (clamp activation), act_bwd (its derivative mask),
#: eltwise (two-operand vector op), pool, reshape, loss, reduce (sum over all dims but 1),
#: view (a parameter's mask view), update (writes parameters), stat (batch statistics),
#: chan (channel plumbing: concat / slice along dim 1, a copy at one shared format),
#: bcast (a product with a per-channel operand broadcast over H, W: VMULC)
FAMILIES = ("mac", "act", "act_bwd", "eltwise", "pool", "reshape", "loss", "reduce", "view",
            "update", "stat", "chan", "bcast")
PHASES = ("forward", "loss", "backward", "update")
MAC_PATTERNS = ("FP", "EB", "WG")
#: how the mask pass carries channel selections (dim 1) through an op: ``rows`` (a forward
#: MAC: the output's channels are its weight rows), ``same`` (the output follows input 0),
#: ``meet`` (add: both operands must agree), ``flatten`` (reshape: dim-1 blocks of H*W),
#: ``eb`` (the input shape follows the weight view), ``wg`` (the weight gradient follows
#: the operands), ``concat`` (the operands' selections at their channel offsets: a derived
#: index table), ``slice`` (the part of the input's selection in a channel range),
#: ``gate`` (a product with a per-channel gate: both operands keep the same channels),
#: ``none`` (inserted after the mask pass)
CHANNEL_RULES = ("rows", "same", "meet", "flatten", "eb", "wg", "concat", "slice", "gate",
                 "none")
#: what the memory plan does with an op's outputs: act / err / grad (materialised; grad is
#: a parameter gradient when the graph names it so), alias (shares its input's tensor),
#: view (no tensor), in_place (writes its inputs' tensors)
RESULTS = ("act", "err", "grad", "alias", "view", "in_place")


@dataclass(frozen=True)
class OpDef:
    name: str
    inputs: tuple[int, int]                 # number of inputs (min, max)
    outputs: int | tuple[int, int]          # number of outputs, or (min, max)
    attrs: tuple[str, ...]                  # required attributes
    family: str
    phase: str
    mac: str | None                         # MAC pattern FP / EB / WG, None: not a MAC op
    channels: str                           # mask rule kind (CHANNEL_RULES)
    result: str                             # memory-plan kind of the outputs (RESULTS)
    nest: tuple[tuple[str, ...], tuple[str, ...]] | None   # (parallel, reduction) dims
    stages: frozenset[str]                  # the stages that need a rule for this op
    doc: str

    def __post_init__(self):
        if self.family not in FAMILIES or self.phase not in PHASES:
            raise ValueError(f"op {self.name}: family {self.family!r} / phase {self.phase!r}")
        if self.mac not in (None, *MAC_PATTERNS) or (self.mac is None) == (self.family == "mac"):
            raise ValueError(f"op {self.name}: MAC pattern {self.mac!r} vs family")
        if self.channels not in CHANNEL_RULES or self.result not in RESULTS:
            raise ValueError(f"op {self.name}: channels {self.channels!r} / result "
                             f"{self.result!r}")
        if not self.stages <= set(STAGES):
            raise ValueError(f"op {self.name}: unknown stages {set(self.stages) - set(STAGES)}")
        if (self.nest is None) == ("tiling" in self.stages):
            raise ValueError(f"op {self.name}: a tiled op has loop dims, and only it")

    @property
    def materialised(self) -> bool:
        """Lowered to a loop nest of instructions (views and reshapes are not)."""
        return self.nest is not None


_GRAPH = ("shape", "float", "reference", "quantize", "mask")     # the training graph's ops
_LOWERED = ("tiling", "codegen")


def _op(name, inputs, outputs, attrs, family, phase, channels, result, nest, doc, mac=None,
        stages=None) -> OpDef:
    if stages is None:
        stages = _GRAPH + _LOWERED + (("onnx",) if phase == "forward" else ())
    return OpDef(name, inputs, outputs, tuple(attrs), family, phase, mac, channels, result,
                 nest, frozenset(stages), doc)


_E = (("e",), ())                       # element-wise vector op: one flat dim
_CH = (("n", "c"), ())                  # channel copy: batch by output channels
_MAC_FWD = (("n", "g", "co", "oh"), ("ci",))    # g: groups; co / ci: channels per group
_MAC_EB = (("n", "g", "ci", "ih"), ("co",))
_MAC_WG = (("g", "co", "ci"), ("n", "oh"))

# In graph order of docs/ir.md; the order is the one error messages list the ops in.
REGISTRY: dict[str, OpDef] = {d.name: d for d in (
    # ---- forward ----
    _op("conv", (2, 3), 1, ("stride", "pad"), "mac", "forward", "rows", "act", _MAC_FWD,
        "x[N,C,H,W], w[O,C/groups,KH,KW] (, b[O]) -> y[N,O,OH,OW] (attr groups, default 1; "
        "BatchNorm and average pooling are depthwise convs with groups = C)", mac="FP"),
    _op("linear", (2, 3), 1, (), "mac", "forward", "rows", "act", _MAC_FWD,
        "x[N,F], w[O,F] (, b[O]) -> y[N,O]", mac="FP"),
    _op("relu", (1, 1), 1, (), "act", "forward", "same", "act", _E, "x -> max(x, 0)"),
    _op("hardtanh", (1, 1), 1, ("lo", "hi"), "act", "forward", "same", "act", _E,
        "x -> clamp(x, lo, hi) (ReLU6 / Hardtanh; lo, hi are the real bounds)"),
    _op("add", (2, 2), 1, ("grad",), "eltwise", "forward", "meet", "act", _E,
        "a, b -> a + b (same shape): residual connections; with grad=true, the sum of two "
        "back-propagated errors of one forward value"),
    _op("maxpool", (1, 1), 1, ("kernel", "stride", "pad"), "pool", "forward", "same", "act",
        (("p",), ()), "x[N,C,H,W] -> y; floor mode, -inf padding, dilation 1"),
    _op("concat", (2, 256), 1, ("grad", "sizes"), "chan", "forward", "concat", "act", _CH,
        "x_0[N,C_0,H,W], x_1[N,C_1,H,W], ... -> y[N,sum C_i,H,W] (torch.cat along dim 1; "
        "attr sizes: the operands' unmasked channel counts); with grad=true, the error of "
        "a split (its parts' errors side by side)"),
    _op("slice", (1, 1), 1, ("grad", "start", "stop", "c0", "c1"), "chan", "forward",
        "slice", "act", _CH,
        "x[N,C,H,W] -> x[:, c0:c1] (torch.split / chunk / narrow along dim 1; start, stop: "
        "the unmasked channel range, c0, c1: the same range in the compacted tensor); with "
        "grad=true, a part of a concat's error (attr sel: the forward value whose channels "
        "the error has)"),
    _op("chmul", (2, 2), 1, ("grad",), "bcast", "forward", "gate", "act", (("p",), ()),
        "x[N,C,H,W], s[N,C,1,1] -> x * s, s broadcast over H, W (squeeze-excitation "
        "gating); with grad=true, the error dy * s of x"),
    _op("reshape", (1, 1), 1, ("shape",), "reshape", "forward", "flatten", "alias", None,
        "row-major view, e.g. flatten [N,C,H,W] -> [N,C*H*W]", stages=_GRAPH + ("onnx",)),
    # ---- loss ----
    _op("loss_grad", (2, 2), 1, (), "loss", "loss", "same", "err", (("n",), ()),
        "z[N,K], labels[N] -> dz[N,K] = (softmax(z) - onehot(labels)) / N (mean CE "
        "gradient); with attr target = pseudo | kd the second operand is the teacher's "
        "logits t[N,K] (compiler/passes/teacher.py): pseudo: onehot(argmax t), rows whose "
        "teacher confidence is below attr threshold get 0; kd: softmax(z/T) - softmax(t/T), "
        "T = attr temp"),
    # ---- backward ----
    _op("conv_eb", (2, 2), 1, ("stride", "pad", "in_shape"), "mac", "backward", "eb", "err",
        _MAC_EB, "dy[N,O,OH,OW], w[O,C,KH,KW] -> dx[N,C,H,W] (error back-propagation, EB)",
        mac="EB"),
    _op("conv_wg", (2, 2), 1, ("stride", "pad", "kernel"), "mac", "backward", "wg", "grad",
        _MAC_WG, "dy[N,O,OH,OW], x[N,C,H,W] -> dw[O,C,KH,KW] (weight gradient, WG)",
        mac="WG"),
    _op("linear_eb", (2, 2), 1, (), "mac", "backward", "eb", "err", _MAC_EB,
        "dy[N,O], w[O,F] -> dx[N,F]", mac="EB"),
    _op("linear_wg", (2, 2), 1, (), "mac", "backward", "wg", "grad", _MAC_WG,
        "dy[N,O], x[N,F] -> dw[O,F]", mac="WG"),
    _op("bias_grad", (1, 1), 1, (), "reduce", "backward", "none", "grad", (("c",), ("n",)),
        "dy[N,O,...] -> db[O] (sum over every dim but 1)"),
    _op("chmul_ds", (2, 2), 1, (), "bcast", "backward", "none", "err", (("p",), ()),
        "dy[N,C,H,W], x[N,C,H,W] -> ds[N,C,1,1] = sum over H, W of dy * x (the error of "
        "chmul's gate s)"),
    _op("relu_bwd", (2, 2), 1, (), "act_bwd", "backward", "same", "err", _E,
        "dy, y -> dy where y > 0 else 0 (y is relu's OUTPUT)"),
    _op("hardtanh_bwd", (2, 2), 1, ("lo", "hi"), "act_bwd", "backward", "same", "err", _E,
        "dy, y -> dy where lo < y < hi else 0 (y is hardtanh's OUTPUT)"),
    _op("maxpool_bwd", (2, 2), 1, ("kernel", "stride", "pad"), "pool", "backward", "same",
        "err", (("p",), ()),
        "dy[N,C,OH,OW], x[N,C,H,W] -> dx[N,C,H,W] (x is maxpool's INPUT)"),
    # ---- masks and update (inserted by passes) ----
    _op("wview", (1, 1), 1, ("out_idx", "in_idx", "in_block"), "view", "forward", "none",
        "view", None,
        "p (full PyTorch shape) -> compacted view: rows out_idx (dim 0), and along dim 1 "
        "the blocks in_idx of in_block consecutive elements (in_block = H*W for a linear "
        "after a flatten, 1 otherwise). None = keep all.",
        stages=("shape", "float", "reference", "quantize", "onnx")),
    _op("sgd", (2, 4), (1, 3), ("lr", "out_idx", "in_idx", "in_block"), "update", "update",
        "none", "in_place", (("r", "b"), ()),
        "p, g -> p' (float graph); p8, master, g -> p8', master' (quantized graph); with "
        "attr mom (momentum / weight decay): p8, master, g, mom -> p8', master', mom'. The "
        "update writes through the same view as the matching wview (attrs copied).",
        stages=("shape", "float", "reference") + _LOWERED),
    _op("bn_adapt", (3, 3), 2, ("mode", "cnt", "d", "p", "eps", "m", "out_idx", "out_tab",
                                "b_tab"), "stat", "update", "none", "in_place",
        (("c",), ("n",)),        # rows, dim-1 blocks of the parameter's mask view
        "x[N,C,...], b[C], q[C,1,1,1] -> b', q' (--adapt-bn): BatchNorm constants from the "
        "statistics of the BN input x: b is the producing conv's bias (mode 0, the mean is "
        "folded in) or the BN shift (mode 1), q the int8 scale. Rows out_idx of b and q "
        "(tables b_tab, out_tab) are written in place.",
        stages=("reference",) + _LOWERED),
)}


def op(name: str) -> OpDef:
    """The OpDef of ``name``; a clear error for an unknown op."""
    d = REGISTRY.get(name)
    if d is None:
        raise ValueError(f"unknown op {name!r} (expected one of {', '.join(REGISTRY)})")
    return d


def group(**where) -> frozenset[str]:
    """The op names whose fields equal ``where`` (a field given as a tuple: any of them)."""
    def ok(d, k, v):
        return getattr(d, k) in v if isinstance(v, tuple) else getattr(d, k) == v
    return frozenset(d.name for d in REGISTRY.values() if all(ok(d, k, v) for k, v in where.items()))


def applies(stage: str) -> frozenset[str]:
    """The ops the stage ``stage`` must have a rule for."""
    return frozenset(d.name for d in REGISTRY.values() if stage in d.stages)


# ---- named groups (tinygrad GroupOp style) ----
MAC_OPS = group(family="mac")                       # conv, linear and their EB / WG
MAC_FORWARD = group(mac="FP")                       # conv, linear
MAC_EB = group(mac="EB")                            # conv_eb, linear_eb
MAC_WG = group(mac="WG")                            # conv_wg, linear_wg
CONV_OPS = frozenset({"conv", "conv_eb", "conv_wg"})     # the 2-D (grouped) MAC ops
LINEAR_OPS = frozenset({"linear", "linear_eb", "linear_wg"})
ACTIVATIONS = group(family="act")                   # relu, hardtanh: fuse into a MAC / add
ACT_BWD = group(family="act_bwd")                   # relu_bwd, hardtanh_bwd
ELTWISE = group(family=("act", "act_bwd", "eltwise"))   # flat vector ops (VADD / VMASK)
POOLS = group(family="pool")                        # maxpool, maxpool_bwd
FORWARD = group(phase="forward")                    # everything before the loss
BACKWARD = group(phase="backward")
GRADIENTS = group(result="grad")                    # conv_wg, linear_wg, bias_grad
ERRORS = group(result="err")                        # back-propagated errors (and dz)
MATERIALISED = frozenset(d.name for d in REGISTRY.values() if d.materialised)
#: ops whose output has its input's fixed-point format (dynamic formats: one register)
SAME_FORMAT = group(family=("act", "act_bwd", "pool", "reshape", "view", "chan"))
CHANNEL_OPS = group(family="chan")                  # concat, slice: copies at one format
GATE_OPS = group(family="bcast")                    # chmul, chmul_ds: VMULC then RQ
#: the MAC pattern's base op (the conv form tilefit / schedule size tiles for)
MAC_BASE = {"FP": "conv", "EB": "conv_eb", "WG": "conv_wg"}

assert CONV_OPS | LINEAR_OPS == MAC_OPS
