"""edgec remask: give a compiled program another user's mask without recompiling.

A program depends on its mask only through the number of channels each layer keeps
(shapes, tiling, instructions, formats: the quantize pass calibrates without the user's
choice of channels) and through WHICH channels it keeps: the channel index tables
``tab:<layer>`` and the ``mask`` entry of the meta, which prog.bin keeps in two small
sections of their own (head and tables, isa/container.py).  When the new mask keeps the
same count in every layer, rewriting those two sections gives the very bytes a fresh
``edgec compile --mask`` would write; the code, data and symbols sections are copied
unread, with their digests.  What remask needs to check the new mask as compile
does is in the meta ``remask`` entry: the maskable layers and their channel counts, the
layers that cannot be masked (and why), the logits layer, and the residual adds where two
masked layers meet (their lists must stay equal).

Imports: the container (edgec.isa) and the mask-file parser (lark) only; no torch.
"""
from __future__ import annotations

import struct

from edgec.isa.container import Head, read_head, write_with_head
from edgec.isa.errors import EdgecError

from .file import drop_full, parse_mask, residual_error


def remask_info(layers: dict[str, int], refuse: dict[str, str], logits_layer: str,
                ties: list) -> dict:
    """The meta ``remask`` entry (written by the driver, read by :func:`remask`)."""
    return {"layers": dict(sorted(layers.items())), "refuse": dict(sorted(refuse.items())),
            "logits_layer": logits_layer, "ties": [list(t) for t in ties]}


def _info(meta: dict, path: str) -> dict:
    info = meta.get("remask")
    ok = (isinstance(info, dict) and isinstance(info.get("layers"), dict)
          and all(isinstance(k, str) and isinstance(v, int) for k, v in info["layers"].items())
          and isinstance(info.get("refuse"), dict) and isinstance(info.get("logits_layer"), str)
          and isinstance(info.get("ties"), list)
          and all(isinstance(t, list) and len(t) == 4 for t in info["ties"])
          and isinstance(meta.get("mask"), dict)
          and all(isinstance(v, list) for v in meta["mask"].values()))
    if not ok:
        raise EdgecError(f"{path}: the program was not compiled with --remaskable (its "
                         "fixed-point formats may depend on which channels its mask keeps; "
                         "no valid 'remask' entry in its meta): recompile with edgec compile "
                         "--remaskable")
    return info


def remask(prog_path: str, mask_path: str, write) -> None:
    """Check ``mask_path`` against the program ``prog_path`` as compile would, then call
    ``write(fn)``, where ``fn(f)`` writes the program with the new mask to the binary file
    ``f``.  Reads and verifies the program's header, head and tables sections only; its
    code, data and symbols are copied with their digests (isa/container.py), so damage
    there is still reported when the result is loaded."""
    try:
        src = open(prog_path, "rb")
    except OSError as e:
        raise EdgecError(f"{prog_path}: cannot read ({e.strerror})") from None
    with src:
        _remask_open(src, prog_path, mask_path, write)


def remask_blob(blob: bytes, mask_path: str, name: str = "prog.bin") -> bytes:
    """:func:`remask` of a program held in memory (``name`` is what errors call it): the
    bytes of the program with the mask ``mask_path``.  write_with_head copies through file
    descriptors, so the program and the result pass through anonymous temporary files."""
    import tempfile
    with tempfile.TemporaryFile() as src, tempfile.TemporaryFile() as dst:
        src.write(blob)
        src.flush()
        src.seek(0)
        _remask_open(src, name, mask_path, lambda fn: fn(dst))
        dst.seek(0)
        return dst.read()


def _remask_open(src, prog_path: str, mask_path: str, write) -> None:
    h = read_head(src, prog_path)
    meta, tables = _remasked(h, prog_path, mask_path)
    write(lambda f: write_with_head(f, h, meta, tables, src))


def _remasked(h: Head, prog_path: str, mask_path: str) -> tuple[dict, bytes]:
    """The head meta and the tables section of the program (head ``h``) under
    ``mask_path``."""
    meta = h.meta
    info = _info(meta, prog_path)
    layers, logits = info["layers"], info["logits_layer"]
    new = drop_full(parse_mask(mask_path, layers, logits, refuse=info["refuse"]), layers)
    old = {k: v for k, v in meta["mask"].items() if k != logits}   # logits: --classes

    def count(m: dict, k: str):
        return len(m[k]) if k in m else layers.get(k, 0)
    diff = [k for k in sorted(set(old) | set(new), key=lambda k: (k not in new, k))
            if count(old, k) != count(new, k)]
    if diff:
        k = diff[0]
        a = count(old, k) if k in old else f"all {count(old, k)}"
        b = count(new, k) if k in new else f"all {count(new, k)} (not listed)"
        where = new.where.get(k, mask_path)
        more = f" (and {len(diff) - 1} more layer{'s' * (len(diff) > 2)})" if len(diff) > 1 \
            else ""
        raise EdgecError(f"{where}: layer {k!r} keeps {b} channels here but {a} in "
                         f"{prog_path}{more}; a program's shapes and instructions depend on "
                         f"how many channels each layer keeps, so remask only swaps masks with "
                         f"the same counts: recompile with edgec compile MODEL --mask "
                         f"{mask_path}")
    for a, b, loc, layer in info["ties"]:
        if new.get(a) != new.get(b):
            raise residual_error(new, (a, b), loc, layer)
    tables, by_name = bytearray(h.tables), {s["name"]: s for s in h.symbols}
    for k, kept in new.items():
        sym = by_name.get(f"tab:{k}", {})
        raw = struct.pack(f"<{len(kept)}i", *kept)
        if sym.get("dtype") != "i32" or sym.get("shape") != [len(kept)] \
                or sym["addr"] + len(raw) > len(tables):
            raise EdgecError(f"{prog_path}: symbol 'tab:{k}' is not the {len(kept)}-entry "
                             "index table remask expects; recompile with edgec compile")
        tables[sym["addr"]:sym["addr"] + len(raw)] = raw
    mask = {k: list(v) for k, v in new.items()}
    if logits in meta["mask"]:
        mask[logits] = meta["mask"][logits]
    return dict(meta, mask=dict(sorted(mask.items()))), bytes(tables)
