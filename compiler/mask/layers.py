"""Which layers a mask can name and what a mask means for a model: `mask_layers` (the
maskable Conv2d/Linear layers and their widths, and the layers that cannot be masked, with
why) and `user_mask` (a user.mask file or a {layer: kept channels} dict, checked against
the model).  The rest of the mask concept: the file format (file.py, mask.lark), deriving a
mask from the weights (derive.py), another user's mask on a compiled program (remask.py),
the graph pass that compacts the kept channels (compiler/passes/mask.py) and the float
view of a masked model (compiler/workflows/floatmodel.py)."""
from __future__ import annotations

import torch

from .file import drop_full, parse_mask


def mask_layers(model: torch.nn.Module) -> tuple[dict[str, int], dict[str, str]]:
    """(maskable layer -> output channels, refused layer -> why it cannot be masked)."""
    out, refuse = {}, {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d) and m.groups > 1:
            refuse[name] = (f"it is a grouped convolution (groups={m.groups}); its channels "
                            "follow its input: mask the layer that feeds it")
        elif isinstance(m, torch.nn.Conv2d):
            out[name] = m.out_channels
        elif isinstance(m, torch.nn.Linear):
            out[name] = m.out_features
    return out, refuse


def user_mask(mask: str | dict | None, model: torch.nn.Module, logits_layer: str) -> dict:
    """A user.mask path (parsed) or a {layer: kept} dict, without the lines that keep every
    channel (they are no mask)."""
    layers, refuse = mask_layers(model)
    if isinstance(mask, str):
        mask = parse_mask(mask, layers, logits_layer, refuse=refuse)
    mask = mask if isinstance(mask, dict) and hasattr(mask, "where") else dict(mask or {})
    return drop_full(mask, layers)
