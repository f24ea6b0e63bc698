"""Seeded random CNNs built from the block ops (+ masks) for the bit-exactness tests.

Like randmodels.py, but composing BatchNorm2d (non-trivial statistics), ReLU / ReLU6 /
Hardtanh(-1, 1), residual blocks (identity or 1x1 conv+BN shortcut), depthwise and grouped
convs, AvgPool2d / MaxPool2d, Dropout / Identity, AdaptiveAvgPool2d(1) or a plain
flatten, then a small Linear head.  Shapes stay small (batch 1-4, channels <= 12,
spatial 4-10).

``random_channel_block_case`` adds the channel plumbing of DenseNet / GoogLeNet /
ShuffleNet / GhostNet blocks: ``torch.cat`` of a block's input and its output (dense),
of parallel branches (inception), of a cheap depthwise feature map (ghost), and
``torch.chunk`` + ``torch.cat`` (split), and squeeze-excitation gates ``x * s``.

Mask rules the dicts respect: never a depthwise or grouped conv, never the logits Linear,
never a layer whose output reaches a residual add (through BN, activations, pools,
Dropout/Identity, depthwise convs or a concat), a grouped conv or a split; at least one
channel kept.
"""
import random

import torch
import torch.fx
from torch import nn

from randmodels import Net


class Residual(nn.Module):
    """``act(body(x) + shortcut(x))``; the shortcut is the identity when absent."""

    def __init__(self, body, shortcut=None, act=None):
        super().__init__()
        self.body = nn.Sequential(*body)
        self.shortcut = nn.Sequential(*shortcut) if shortcut else None
        self.act = act if act is not None else nn.Identity()

    def forward(self, x):
        s = x if self.shortcut is None else self.shortcut(x)
        return self.act(self.body(x) + s)


class Dense(nn.Module):
    """DenseNet: ``cat([x, body(x)], 1)``."""

    def __init__(self, body):
        super().__init__()
        self.body = nn.Sequential(*body)

    def forward(self, x):
        return torch.cat([x, self.body(x)], 1)


class Inception(nn.Module):
    """GoogLeNet: parallel branches concatenated along channels."""

    def __init__(self, branches):
        super().__init__()
        self.branches = nn.ModuleList(nn.Sequential(*b) for b in branches)

    def forward(self, x):
        return torch.cat([b(x) for b in self.branches], 1)


class Split(nn.Module):
    """ShuffleNet v2 (without the shuffle): ``a, b = chunk(x, 2); cat([a, body(b)])``."""

    def __init__(self, body):
        super().__init__()
        self.body = nn.Sequential(*body)

    def forward(self, x):
        a, b = torch.chunk(x, 2, dim=1)
        return torch.cat([a, self.body(b)], 1)


class Ghost(nn.Module):
    """GhostNet: ``y = primary(x); cat([y, cheap(y)])[:, :out]``."""

    def __init__(self, primary, cheap, out):
        super().__init__()
        self.primary = nn.Sequential(*primary)
        self.cheap = nn.Sequential(*cheap)
        self.out = out

    def forward(self, x):
        y = self.primary(x)
        return torch.cat([y, self.cheap(y)], 1)[:, :self.out]


class SqueezeExcite(nn.Module):
    """MobileNetV3 / EfficientNet: ``x * gate(mean(x))`` with a per-channel gate."""

    def __init__(self, c, r, gate):
        super().__init__()
        self.fc1 = nn.Conv2d(c, r, 1)
        self.fc2 = nn.Conv2d(r, c, 1)
        self.gate = gate

    def forward(self, x):
        s = torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))
        return x * self.gate(self.fc2(s))


def _act(rng, p_none=0.25):
    r = rng.random()
    if r < p_none:
        return None
    return rng.choice([nn.ReLU(), nn.ReLU(), nn.ReLU6(), nn.Hardtanh(-1.0, 1.0)])


def _out(h, k, s, p):
    return (h + 2 * p - k) // s + 1


def _conv_unit(rng, c, o, k, s, groups=1, bn=None, act=True):
    """[Conv2d, optional BN, optional activation] and the layers' list."""
    bn = rng.random() < 0.7 if bn is None else bn
    mods = [nn.Conv2d(c, o, k, stride=s, padding=k // 2, groups=groups,
                      bias=rng.random() < (0.3 if bn else 0.8))]
    if bn:
        mods.append(nn.BatchNorm2d(o))
    a = _act(rng) if act else None
    if a is not None:
        mods.append(a)
    return mods


def _groups(rng, c, o):
    return 2 if c % 2 == 0 and o % 2 == 0 and c >= 2 and rng.random() < 0.25 else 1


def _channel_block(rng, kind, c, h, w):
    """One concat / split block at stride 1: (module, output channels)."""
    if kind == "dense":
        g = rng.randint(2, 6)
        return Dense(_conv_unit(rng, c, g, rng.choice([1, 3]), 1)), c + g
    if kind == "inception":
        branches = [_conv_unit(rng, c, rng.randint(1, 5), k, 1) for k in
                    rng.sample([1, 3, 3, 1], rng.randint(2, 3))]
        if rng.random() < 0.4:
            branches.append([nn.MaxPool2d(3, 1, 1), *_conv_unit(rng, c, rng.randint(1, 4), 1, 1)])
        return Inception(branches), sum(b[0].out_channels if isinstance(b[0], nn.Conv2d)
                                        else b[1].out_channels for b in branches)
    if kind == "split" and c % 2 == 0:
        half = c // 2
        body = _conv_unit(rng, half, half, 1, 1) + _conv_unit(rng, half, half, 3, 1, groups=half)
        return Split(body), c
    if kind == "se":
        return SqueezeExcite(c, rng.randint(1, 4), rng.choice([nn.Hardtanh(0.0, 1.0),
                                                               nn.ReLU6(), nn.ReLU()])), c
    o = rng.randint(2, 6)
    primary = _conv_unit(rng, c, o, 1, 1)
    return Ghost(primary, _conv_unit(rng, o, o, 3, 1, groups=o), 2 * o), 2 * o


def _features(rng, c, h, w, channel_blocks=False):
    feats = []
    for i in range(rng.randint(1, 4)):
        kind = rng.choices(["conv", "dw", "res", "pool", "misc"], [3, 2, 3, 1.2, 0.8])[0]
        if channel_blocks and (i == 0 or rng.random() < 0.6):
            kind = rng.choice(["dense", "inception", "split", "ghost", "se"])
            block, c = _channel_block(rng, kind, c, h, w)
            feats.append(block)
            continue
        if kind == "conv":
            k = rng.choice([1, 3, 3])
            s = rng.choice([1, 1, 2]) if min(h, w) >= 4 else 1
            o = rng.randint(2, 12)
            feats += _conv_unit(rng, c, o, k, s, _groups(rng, c, o))
            c, h, w = o, _out(h, k, s, k // 2), _out(w, k, s, k // 2)
        elif kind == "dw":
            s = rng.choice([1, 2]) if min(h, w) >= 4 else 1
            feats += _conv_unit(rng, c, c, 3, s, groups=c)
            h, w = _out(h, 3, s, 1), _out(w, 3, s, 1)
        elif kind == "res":
            change = rng.random() < 0.4
            o = rng.randint(2, 12) if change else c
            s = 2 if change and min(h, w) >= 4 and rng.random() < 0.5 else 1
            body = _conv_unit(rng, c, o, 3, s, _groups(rng, c, o))
            second = rng.choice(["dense3", "dense1", "dw", "none"])
            if second == "dense3":
                body += _conv_unit(rng, o, o, 3, 1, _groups(rng, o, o), act=False)
            elif second == "dense1":
                body += _conv_unit(rng, o, o, 1, 1, act=False)
            elif second == "dw":
                body += _conv_unit(rng, o, o, 3, 1, groups=o, act=False)
            elif isinstance(body[-1], (nn.ReLU, nn.ReLU6, nn.Hardtanh)):
                body.pop()                      # end the body on a conv/BN
            shortcut = None
            if o != c or s != 1:
                shortcut = [nn.Conv2d(c, o, 1, stride=s, bias=rng.random() < 0.3)]
                if rng.random() < 0.8:
                    shortcut.append(nn.BatchNorm2d(o))
            feats.append(Residual(body, shortcut, _act(rng, p_none=0.2)))
            c, h, w = o, _out(h, 3, s, 1), _out(w, 3, s, 1)
        elif kind == "pool":
            choices = [("avg", 3, 1, 1), ("max", 3, 1, 1)]
            if min(h, w) >= 2:
                choices += [("avg", 2, 2, 0), ("avg", 2, 2, 0), ("max", 2, 2, 0)]
            t, k, s, p = rng.choice(choices)
            feats.append(nn.AvgPool2d(k, s, p) if t == "avg" else nn.MaxPool2d(k, s, p))
            h, w = _out(h, k, s, p), _out(w, k, s, p)
        else:
            feats.append(nn.Dropout(rng.choice([0.1, 0.5])) if rng.random() < 0.5
                         else nn.Identity())
    return feats, c, h, w


def _init(rng, model, example):
    """Pretrained-looking parameters and non-trivial BN: weights scaled at random, BN
    statistics measured on a random batch (float64, so the values do not depend on the
    CPU) then perturbed, BN affine parameters random."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                for p in m.parameters():
                    p.mul_(rng.uniform(0.5, 2.0))
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if not bns:
        return
    model.double().eval()
    for b in bns:
        b.momentum = None
        b.train()
    with torch.no_grad():
        model(torch.randn((16,) + tuple(example.shape[1:]), dtype=torch.float64))
    model.float().eval()
    with torch.no_grad():
        for b in bns:
            b.momentum = 0.1
            c = b.num_features
            b.running_var.clamp_(min=0.05).mul_(torch.empty(c).uniform_(0.5, 2.0))
            b.running_mean.add_(0.3 * b.running_var.sqrt() * torch.randn(c))
            b.weight.copy_((1 + 0.3 * torch.randn(c)) * torch.where(torch.rand(c) < 0.1,
                                                                       -1.0, 1.0))
            b.bias.copy_(0.3 * torch.randn(c))


_PASS = (nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.AvgPool2d, nn.MaxPool2d,
         nn.AdaptiveAvgPool2d, nn.Dropout, nn.Identity, nn.Flatten)


def _depthwise(m):
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels \
        and m.out_channels == m.in_channels


def maskable_layers(model):
    """{name: output channels} of the Conv2d/Linear modules a mask may name (see the
    module docstring), in graph order."""
    gm = torch.fx.symbolic_trace(model)
    mods = dict(model.named_modules())

    def passthrough(n):
        if n.op == "call_module":
            m = mods[n.target]
            return isinstance(m, _PASS) or _depthwise(m)
        return n.op == "call_function" and n.target in (torch.flatten, torch.cat, torch.relu)

    def safe(start):
        todo = [start]
        while todo:
            for u in todo.pop().users:
                if u.op == "call_module" and isinstance(mods[u.target], nn.Linear):
                    continue
                if u.op == "call_module" and isinstance(mods[u.target], nn.Conv2d) \
                        and mods[u.target].groups == 1:
                    continue
                if passthrough(u):
                    todo.append(u)
                    continue
                return False      # an add, a grouped conv, the output, anything else
        return True

    out = {}
    for n in gm.graph.nodes:
        if n.op != "call_module":
            continue
        m = mods[n.target]
        if isinstance(m, nn.Conv2d) and m.groups == 1 and safe(n):
            out[n.target] = m.out_channels
        elif isinstance(m, nn.Linear) and safe(n) and not any(
                u.op == "output" for u in n.users):
            out[n.target] = m.out_features
    return out


def random_channel_block_case(seed: int):
    """Like ``random_block_case``, with concat / split blocks among the features."""
    return random_block_case(seed, channel_blocks=True)


def random_block_case(seed: int, channel_blocks: bool = False):
    """(model, example_input, mask dict) for one seed; shapes stay small."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    n = rng.randint(1, 4)
    c = rng.randint(2, 4)
    h = rng.randint(4, 10)
    w = min(10, max(4, h + rng.randint(-1, 1)))
    example = torch.randn(n, c, h, w)
    feats, c, h, w = _features(rng, c, h, w, channel_blocks)
    if rng.random() < 0.6:
        feats.append(nn.AdaptiveAvgPool2d(1))
        h = w = 1
    c = c * h * w
    head = []
    if rng.random() < 0.5:
        o = rng.randint(3, 16)
        head += [nn.Linear(c, o, bias=rng.random() < 0.8), nn.ReLU()]
        if rng.random() < 0.3:
            head.append(nn.Dropout(0.25))
        c = o
    head.append(nn.Linear(c, rng.randint(3, 7)))
    model = Net(feats, head)
    _init(rng, model, example)
    model.eval()
    mask = {}
    for name, o in maskable_layers(model).items():
        if rng.random() < 0.5:
            mask[name] = sorted(rng.sample(range(o), rng.randint(1, o)))
    return model, example, mask


def random_grouped_case(seed: int):
    """(model, example_input, mask dict) for one seed: a 1x1 stem, then one or two grouped
    convs (2-8 groups of 2-16 channels, RegNet-like when the group widths agree; stride 1
    or 2; BN and ReLU at random), AdaptiveAvgPool2d(1) and a Linear head.  Large enough
    per group that the tiny target must split the grouped MAC nests.  No mask: every conv
feeds a grouped conv or the head."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    n, c0 = rng.randint(1, 3), rng.randint(2, 4)        # verify needs 2+ input elements
    h = rng.randint(1, 6)
    w = max(1, h + rng.randint(-1, 1))
    example = torch.randn(n, c0, h, w)
    groups, cg = rng.randint(2, 8), rng.choice([2, 3, 4, 8, 16])
    c = groups * cg
    feats = _conv_unit(rng, c0, c, 1, 1, act=True)
    for _ in range(rng.randint(1, 2)):
        o = groups * rng.choice([cg, cg, 2 * cg])
        s = rng.choice([1, 1, 2]) if min(h, w) >= 4 else 1
        feats += _conv_unit(rng, c, o, 3, s, groups=groups)
        c, h, w = o, _out(h, 3, s, 1), _out(w, 3, s, 1)
        cg = o // groups
    feats.append(nn.AdaptiveAvgPool2d(1))
    model = Net(feats, [nn.Linear(c, rng.randint(3, 7))])
    _init(rng, model, example)
    model.eval()
    return model, example, {}      # a grouped conv's input cannot be masked
