"""The bundled 8x8 digits (examples/digits.npz, no download): images in [0, 1] as
(N,1,8,8), labels."""
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent.parent))
from digits import digits  # noqa: E402,F401
