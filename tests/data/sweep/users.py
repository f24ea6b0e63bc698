"""Two users for the tiny sweep spec: the digits as they are, and with inverted contrast;
training rows 900-1099, test rows 1350-1449."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "examples"))
from digits import digits  # noqa: E402


def users(rows: int = 200):
    x, y = digits()
    tr, te = slice(900, 900 + rows), slice(1350, 1450)
    return {"plain": {"train": (x[tr], y[tr]), "test": (x[te], y[te]), "style": "as is"},
            "inverted": {"train": (1 - x[tr], y[tr]), "test": (1 - x[te], y[te]),
                         "style": "inverted contrast"}}
