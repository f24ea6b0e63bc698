"""What a file looks like, from its first bytes: so that a command given the wrong kind
of file says what it got and what it expected, instead of failing inside a parser (or
executing a binary file as Python).  Reads at most HEAD bytes; never executes or
unpickles anything."""
from __future__ import annotations

import re
import zipfile

HEAD = 8192
PROGRAM = "a prog.bin (an edgec program)"
NPZ = "a NumPy .npz archive"
NPY = "a NumPy .npy file (one array)"
TORCH = "a PyTorch file (torch.save)"
MASK = "a user.mask (kept channels per layer)"
IR = "an edgec IR dump"
ASM = "edgec assembly (edgec disasm)"
TOML = "a TOML file"
PYTHON = "Python source"
ONNX = "an ONNX model"
BINARY = "a binary file"

_MASK_LINE = re.compile(r"^[A-Za-z_][\w.]*\s*:\s*[\d\s,\-]*$")
_TOML_LINE = re.compile(r"^(\[[\w.\-]+\]|[A-Za-z_][\w\-]*\s*=\s*\S.*)$")
_ASM_LINE = re.compile(r"^(\.(target|ddr_size|data_size|data|symbol|meta|word)\b|"
                       r"(\d+:\s*)?[A-Z]{2,7}(\s+[a-z]\w*=\S+)*\s*(;.*)?$)")


def _zip_kind(path: str) -> str:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return "a zip archive"
    if any(n.endswith("data.pkl") for n in names):
        return TORCH
    if names and all(n.endswith(".npy") for n in names):
        return NPZ
    return "a zip archive"


def _text_kind(text: str) -> str | None:
    lines = [ln.strip() for ln in text.splitlines()]
    body = [ln for ln in lines if ln and not ln.startswith(("#", ";"))]
    if not body:
        return None
    if re.match(r"edgec (graph|loop) v\d+", body[0]):
        return IR
    if any(re.match(r"\s*(import|from)\s+\w", ln) or re.match(r"(def|class)\s+\w", ln)
           for ln in body):
        return PYTHON
    asm = sum(bool(_ASM_LINE.match(ln)) for ln in body)
    if body[0].startswith(".target") or asm == len(body) and asm >= 2:
        return ASM
    if all(_MASK_LINE.match(ln.split("#")[0].strip()) for ln in body):
        return MASK
    if all(_TOML_LINE.match(ln.split("#")[0].strip()) for ln in body):
        return TOML
    return None


def sniff(path: str) -> str | None:
    """What `path` looks like (one of the descriptions above, "a binary file", "a zip
    archive", ...), or None for text of no kind known here (or an unreadable file)."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD)
    except OSError:
        return None
    if head.startswith(b"EDGECPB\0"):             # isa/container.py MAGIC
        return PROGRAM
    if head.startswith(b"\x93NUMPY"):
        return NPY
    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(path)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle"
    if str(path).lower().endswith(".onnx"):
        return ONNX
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if len(head) - e.start > 4:             # not just a character cut at HEAD
            return BINARY
        text = head[:e.start].decode("utf-8")
    if "\0" in text:
        return BINARY
    return _text_kind(text)


# where a file of each kind goes, for the error that names what a file looks like
WHERE = {
    PROGRAM: "a prog.bin is what edgec run / disasm / report / remask read",
    NPZ: "a batch goes to edgec run --input, data to finetune --data",
    NPY: "save the arrays with numpy.savez(path, x=..., y=...)",
    TORCH: "load weights in model.py: model.load_state_dict(torch.load(path, "
           "weights_only=True))",
    MASK: "give a mask with --mask",
    IR: "edgec compile / verify / ir read a dump named .ir or .loop",
    ASM: "edgec asm assembles it",
    TOML: "give a target with --target",
    PYTHON: "a model.py is the first argument of compile / verify / finetune / mask",
}


def check_kind(path: str, expected: str, accept: tuple[str, ...] = ()) -> None:
    """Raise EdgecError "PATH: this looks like KIND, not EXPECTED (where KIND goes)" when
    the file is recognisably of another kind than `accept` (unrecognised text passes:
    its own parser reports where it goes wrong)."""
    from .errors import EdgecError
    kind = sniff(path)
    if kind is None or kind in accept:
        return
    hint = WHERE.get(kind)
    raise EdgecError(f"{path}: this looks like {kind}, not {expected}"
                     + (f"; {hint}" if hint else ""))
